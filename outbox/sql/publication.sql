-- The publication the relay reads the outbox through: inserts only, and the
-- rows of a partitioned outbox under the parent's name. The relay creates it
-- itself when its role may (--create-publication, the default); create it
-- here, as the table's owner, to run the relay without those rights
-- (--create-publication=false). Relay settings: --publication=outbox_relay,
-- --table=events.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'outbox_relay') THEN
    CREATE PUBLICATION outbox_relay FOR TABLE events
      WITH (publish = 'insert', publish_via_partition_root = true);
  END IF;
END
$$;
