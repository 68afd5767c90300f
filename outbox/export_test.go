package outbox

// AlwaysRecordset returns a copy of w that writes every batch through the
// jsonb recordset statement, which w keeps for batches over 32 events, so
// that the benchmark can compare both at every size.
func (w *Writer) AlwaysRecordset() *Writer {
	cp := *w
	cp.valuesSQL = nil
	return &cp
}
