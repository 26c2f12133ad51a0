"""``python -m regatta.items.migrate``: upgrade the items schema to head, then exit."""

from regatta.common.migrations import main
from regatta.items.main import SERVICE
from regatta.items.settings import ItemsSettings

if __name__ == "__main__":
    main(ItemsSettings(), [SERVICE.migrations])
