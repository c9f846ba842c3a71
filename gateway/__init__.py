"""The HTTP/JSON front door: authentication, routing to the services, errors, streaming."""
