-- The outbox table partitioned by created_at, so that published rows are
-- cleaned up by dropping whole partitions (no DELETE, no vacuum). Point the
-- relay at this parent table, never at a partition; its publication must
-- publish the partitions' rows under the parent's name
-- (publish_via_partition_root = true, as publication.sql creates it).
CREATE TABLE IF NOT EXISTS events (
  id             uuid        NOT NULL DEFAULT gen_random_uuid(), -- becomes Nats-Msg-Id
  aggregate_type text        NOT NULL,                             -- subject token
  aggregate_id   text        NOT NULL,
  event_type     text        NOT NULL,                             -- subject token
  payload        jsonb       NOT NULL,                             -- the message body, as payload::text
  headers        jsonb,                                            -- optional extra message headers
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id, created_at)  -- a partitioned table's keys include the partition key
) PARTITION BY RANGE (created_at);

-- Rows for which no partition exists land here rather than failing the
-- writer's transaction. Create each period's partition before its rows
-- arrive (a new partition cannot take a range the default one holds rows
-- of), and drop old ones once published:
--   CREATE TABLE events_2027_01 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2027-02-01');
--   ALTER TABLE events DETACH PARTITION events_2026_11; DROP TABLE events_2026_11;
CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT;
