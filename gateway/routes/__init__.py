"""One routes module per domain; the app mounts every table listed here."""

from gateway.routes import accounts, catalog, discovery, orders, queue, sales

ROUTE_TABLES = [accounts.routes, catalog.routes, sales.routes, queue.routes, orders.routes,
                discovery.routes]
