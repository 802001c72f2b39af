-- An operator's answer to what the reconciler set aside (`flashsale sale parked`): a dead
-- letter applied again once its cause was fixed, or a dead letter or a reused-id conflict
-- accounted for by hand. The row stays as the record of what happened and what was done;
-- only unresolved rows fail the audit and count in flashsale_dead_letters_parked.
ALTER TABLE sale_dead_letters ADD COLUMN resolved_at TIMESTAMPTZ,
    ADD COLUMN resolution TEXT;
ALTER TABLE sale_event_conflicts ADD COLUMN resolved_at TIMESTAMPTZ,
    ADD COLUMN resolution TEXT;
