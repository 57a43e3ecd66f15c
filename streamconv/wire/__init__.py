"""The wire: the message format (protocol) and the only place sockets are made (transport)."""
