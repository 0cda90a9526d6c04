"""``python -m grantvault_server`` is the ``grantvault`` command."""

from grantvault_server.cli.main import main

main()
