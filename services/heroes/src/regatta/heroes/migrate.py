"""``python -m regatta.heroes.migrate``: upgrade the heroes schema to head, then exit."""

from regatta.common.data.migrations import main
from regatta.heroes.main import SERVICE
from regatta.heroes.settings import HeroesSettings

if __name__ == "__main__":
    main(HeroesSettings(), [SERVICE.migrations])
