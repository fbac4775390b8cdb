"""The Alembic environment and revisions of the catalog, installed as the package ``adreg_migrations``."""
