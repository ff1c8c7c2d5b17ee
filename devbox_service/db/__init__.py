from devbox_service.db.database import Database, Row

__all__ = ["Database", "Row"]
