-- The outbox table the relay reads. Write events into it in the same
-- transaction as the business change they describe; the relay publishes
-- each committed row to JetStream once, in commit order.
CREATE TABLE IF NOT EXISTS events (
  id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(), -- becomes Nats-Msg-Id
  aggregate_type text        NOT NULL,                             -- subject token
  aggregate_id   text        NOT NULL,
  event_type     text        NOT NULL,                             -- subject token
  payload        jsonb       NOT NULL,                             -- the message body, as payload::text
  headers        jsonb,                                            -- optional extra message headers (string values)
  created_at     timestamptz NOT NULL DEFAULT now()
);
