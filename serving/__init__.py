"""TF Serving deployment helpers: request builders, REST and gRPC clients, a protocol-true test server."""
