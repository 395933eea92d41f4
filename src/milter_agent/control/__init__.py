"""The control plane: a permission-checked Unix socket, its JSON-lines protocol, ma-client."""
