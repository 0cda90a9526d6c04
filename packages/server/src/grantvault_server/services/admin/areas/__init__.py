"""One module per area of administration; importing this package registers every operation."""

from grantvault_server.services.admin.areas import apps, keys

MODULES = (apps, keys)
