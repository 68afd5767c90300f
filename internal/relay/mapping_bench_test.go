package relay

import (
	"fmt"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
)

// benchEvent is a typical outbox event as the reader delivers it: a JSON
// payload of about size bytes, no headers column, a created_at timestamp.
func benchEvent(size int, headers string) cdc.Event {
	ev := cdc.Event{
		ID:            "0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11",
		AggregateType: "order",
		AggregateID:   "o-123456",
		EventType:     "created",
		Payload:       []byte(fmt.Sprintf(`{"n": 123456, "pad": "%s"}`, strings.Repeat("x", max(0, size-24)))),
		CreatedAt:     "2026-11-26 04:13:53.123456+00",
		Position:      cdc.Position{CommitLSN: 0x16_B374D848, Index: 3},
	}
	if headers != "" {
		ev.Headers = []byte(headers)
	}
	return ev
}

// benchMapper maps with the relay's default template, the stream capturing
// its wildcard as a stream the relay creates does.
func benchMapper(b *testing.B) *Mapper {
	b.Helper()
	tmpl, err := ParseTemplate("outbox.{aggregate_type}.{event_type}")
	if err != nil {
		b.Fatal(err)
	}
	return NewMapper(tmpl, "7311425360846561234/app/outbox_relay", tmpl.StreamSubjects())
}

// BenchmarkMapperMessage is the mapper's work per event: subject, stream
// check, headers (row headers when the column is set) and position stamps.
func BenchmarkMapperMessage(b *testing.B) {
	for _, bc := range []struct {
		name    string
		headers string
	}{
		{"headers=null", ""},
		{"headers=2", `{"trace": "4bf92f3577b34da6a3ce929d0e0e4736", "tenant": "acme"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			mp := benchMapper(b)
			ev := benchEvent(256, bc.headers)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := mp.Message(&ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMapperMessageCloudEvents is the same with --cloudevents: the
// attributes cost no allocation per message (shared or reused values); each
// row header turned extension costs its slice only when percent-encoded.
func BenchmarkMapperMessageCloudEvents(b *testing.B) {
	for _, bc := range []struct {
		name    string
		headers string
	}{
		{"headers=null", ""},
		{"headers=traceparent", `{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "acme"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			mp := benchMapper(b)
			ce, err := NewCloudEvents("/outbox-relay/app/public.events", "com.example.{aggregate_type}.{event_type}")
			if err != nil {
				b.Fatal(err)
			}
			mp.SetCloudEvents(ce)
			ev := benchEvent(256, bc.headers)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := mp.Message(&ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The parts of Message, to see where its time goes.

func BenchmarkTemplateSubject(b *testing.B) {
	mp := benchMapper(b)
	ev := benchEvent(256, "")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := mp.template.Subject(&ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMapperCaptured(b *testing.B) {
	mp := benchMapper(b)
	b.ReportAllocs()
	for b.Loop() {
		if !mp.Captured("outbox.order.created") {
			b.Fatal("not captured")
		}
	}
}

func BenchmarkNormalizeTimestamp(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if v, err := normalizeTimestamp("2026-11-26 04:13:53.123456+00"); v == "" || err != nil {
			b.Fatal(err)
		}
	}
}
