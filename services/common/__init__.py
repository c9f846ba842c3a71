"""The small runtime every tunelab service shares: settings, database, gRPC server, logging."""
