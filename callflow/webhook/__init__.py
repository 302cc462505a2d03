"""The webhook: receives Graph calling notifications and checks who sent them."""
