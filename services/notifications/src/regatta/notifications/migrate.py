"""``python -m regatta.notifications.migrate``: upgrade the schema to head, then exit."""

from regatta.common.data.migrations import main
from regatta.notifications.main import SERVICE
from regatta.notifications.settings import NotificationsSettings

if __name__ == "__main__":
    main(NotificationsSettings(), [SERVICE.migrations])
