-- The demo tenant's shop database. Rebuild with:
--   rm -f config/demo/shop.db && sqlite3 config/demo/shop.db < config/demo/shop.sql
-- (or: python -c "import sqlite3; sqlite3.connect('config/demo/shop.db').executescript(open('config/demo/shop.sql').read())")
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer_phone TEXT NOT NULL,
    status TEXT NOT NULL,
    tracking TEXT,
    estimated_delivery TEXT,
    total NUMERIC
);
INSERT INTO orders VALUES
    ('12345', '+1234567890', 'shipped', 'UPS123456', '2025-09-12', 59.90),
    ('12346', '+5491112345678', 'processing', NULL, '2025-09-20', 120.00),
    ('12347', '+1234567890', 'delivered', 'DHL998877', '2025-09-01', 15.50);

CREATE TABLE customers (
    phone TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    plan TEXT,
    balance NUMERIC,
    next_appointment TEXT
);
INSERT INTO customers VALUES
    ('+1234567890', 'Ana Souza', 'ana@example.com', 'Gold', 42.50, '2025-09-15'),
    ('+5491112345678', 'Lucía Pérez', 'lucia@example.com', 'Basic', 0, NULL);
