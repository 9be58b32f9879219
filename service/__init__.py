"""The inference and explanation service. `create_app` lives in `service.app`."""
