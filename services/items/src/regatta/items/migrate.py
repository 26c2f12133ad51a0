"""``python -m regatta.items.migrate``: upgrade the items schema to head, then exit."""

from regatta.common.data.migrations import main
from regatta.items.main import SERVICE
from regatta.items.settings import ItemsSettings

if __name__ == "__main__":
    main(ItemsSettings(), [SERVICE.migrations])
