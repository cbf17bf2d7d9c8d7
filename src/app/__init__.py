"""litestar-base-app: a production-grade Litestar backend template."""
