package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// batchOutputLimit is the fastest n messages of the same payload size can be
// stored with fast batch publishing (allow_batched): one batch of n
// messages with gaps set to fail, each with a unique Nats-Msg-Id, never more
// than window sent beyond the server's last flow acknowledgement (the
// server acknowledges every 500 stored messages), committed by the last, into
// a fresh file stream like the one the relay creates with
// --publish-mode=batch. It is outputLimit with the server pacing the
// publisher.
func (e *env) batchOutputLimit(ctx context.Context, n, window int, payload float64) (pass, error) {
	nc, err := nats.Connect(e.nats.url, nats.Name("bench-batch-output-limit"))
	if err != nil {
		return pass{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return pass{}, err
	}
	name := e.freshStream("BLIMIT")
	defer e.deleteStream(context.WithoutCancel(ctx), name)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = js.CreateStream(cctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{"blimit.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, Replicas: 1,
		AllowBatchPublish: true,
	})
	cancel()
	if err != nil {
		return pass{}, err
	}
	inbox := nc.NewInbox()
	var acked atomic.Uint64
	flow := make(chan struct{}, 1)
	end := make(chan error, 1)
	sub, err := nc.Subscribe(inbox+".>", func(m *nats.Msg) {
		var r struct {
			Type  string              `json:"type"`
			Seq   uint64              `json:"seq"`
			Count uint64              `json:"count"`
			Error *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return
		}
		switch {
		case r.Type == "ack":
			if r.Seq > acked.Load() {
				acked.Store(r.Seq)
			}
			select {
			case flow <- struct{}{}:
			default:
			}
		case r.Type == "gap", r.Type == "err":
			select {
			case end <- fmt.Errorf("batch output limit: %s", m.Data):
			default:
			}
		case r.Error != nil:
			select {
			case end <- fmt.Errorf("batch output limit: %w", r.Error):
			default:
			}
		case r.Count != uint64(n):
			select {
			case end <- fmt.Errorf("batch output limit: committed %d of %d messages", r.Count, n):
			default:
			}
		default:
			select {
			case end <- nil:
			default:
			}
		}
	})
	if err != nil {
		return pass{}, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return pass{}, err
	}
	if err := nc.Flush(); err != nil {
		return pass{}, err
	}
	data := []byte(fmt.Sprintf(`{"n": 123456, "pad": "%s"}`, strings.Repeat("x", max(0, int(payload)-24))))
	prefix := inbox + "." + nuid.Next() + ".500.fail."
	before := sampleUsage(0, e.nats.pid())
	started := time.Now()
	for i := 1; i <= n; i++ {
		for uint64(i)-acked.Load() > uint64(window) {
			select {
			case <-flow:
			case err := <-end:
				if err == nil {
					err = errors.New("batch output limit: committed early")
				}
				return pass{}, err
			case <-time.After(10 * time.Second):
				return pass{}, fmt.Errorf("batch output limit: no flow acknowledgement past %d within 10s", acked.Load())
			case <-ctx.Done():
				return pass{}, ctx.Err()
			}
		}
		op := "1"
		switch i {
		case n:
			op = "2"
		case 1:
			op = "0"
		}
		msg := &nats.Msg{
			Subject: "blimit.order.created", Data: data, Reply: prefix + strconv.Itoa(i) + "." + op + ".$FI",
			Header: nats.Header{jetstream.MsgIDHeader: []string{"blimit-" + strconv.Itoa(i)}},
		}
		if err := nc.PublishMsg(msg); err != nil {
			return pass{}, fmt.Errorf("batch output limit: %w", err)
		}
	}
	select {
	case err := <-end:
		if err != nil {
			return pass{}, err
		}
	case <-time.After(time.Minute):
		return pass{}, errors.New("batch output limit: no PubAck for the commit within a minute")
	case <-ctx.Done():
		return pass{}, ctx.Err()
	}
	return e.outputPass(ctx, "batch output limit", name, n, started, before, payload)
}
