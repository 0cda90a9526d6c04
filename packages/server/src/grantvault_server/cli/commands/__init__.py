"""One module per ``grantvault`` command group; ``grantvault_server.cli.main`` assembles them."""
