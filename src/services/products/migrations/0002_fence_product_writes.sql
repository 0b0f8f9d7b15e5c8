-- The highest lock fencing token a write to the product has carried
-- (src/layers/state/Locks.ts). A write with a lower token is refused: its lock
-- expired and someone else has written since.
ALTER TABLE products ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
