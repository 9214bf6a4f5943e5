/** The issuance-log insert, shared by the datastore and its writer worker. */
export const INSERT_ISSUANCE_SQL = `INSERT INTO issuances (serial, kind, spiffe_id, entry_id, agent_id, ca_key_id, not_before, not_after, issued_at,
  selectors, requested_by, jwt_id, audience) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;
