"""Programs that run inside lab namespaces: a test server (netexec) and a client. Standard library
only, so they start fast and run with any Python."""
