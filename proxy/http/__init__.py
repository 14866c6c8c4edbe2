"""The request path: the listening server and its fast path, routes, and the exchange of one request."""
