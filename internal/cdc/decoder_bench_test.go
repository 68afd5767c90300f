package cdc

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchInsert is an Insert of a typical outbox row, as pgoutput sends it:
// a uuid, short text columns, a JSON payload of about size bytes, no
// headers and a timestamp.
func benchInsert(size int) []byte {
	payload := fmt.Sprintf(`{"n": 123456, "pad": "%s"}`, strings.Repeat("x", max(0, size-24)))
	return encInsert(outboxRelID,
		txt("0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11"),
		txt("order"),
		txt("o-123456"),
		txt("created"),
		txt(payload),
		null,
		txt("2026-11-26 04:13:53.123456+00"),
	)
}

// BenchmarkDecodeInsert is the decoder's work per outbox row: parsing the
// Insert and copying its values out of the connection's buffer.
func BenchmarkDecodeInsert(b *testing.B) {
	for _, size := range []int{256, 1024} {
		b.Run(fmt.Sprintf("payload=%d", size), func(b *testing.B) {
			d := outboxDecoder(b)
			msg := benchInsert(size)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				ch, err := d.decode(msg)
				if err != nil || ch.kind != changeEvent {
					b.Fatalf("decode: %v, kind %d", err, ch.kind)
				}
			}
		})
	}
}

// BenchmarkDecodeTransaction decodes a one-row transaction: Begin, Insert
// and Commit, the stream's shape when every event commits on its own.
func BenchmarkDecodeTransaction(b *testing.B) {
	d := outboxDecoder(b)
	ts := time.Date(2026, 11, 26, 4, 13, 53, 0, time.UTC)
	msgs := [][]byte{encBegin(0x16_B374D848, ts, 991), benchInsert(256), encCommit(0, 0x16_B374D848, 0x16_B374D880, ts)}
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range msgs {
			if _, err := d.decode(m); err != nil {
				b.Fatal(err)
			}
		}
	}
}
