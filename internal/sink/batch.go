package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// MinAtomicServer is the oldest nats-server release the relay publishes
// atomic batches to. Atomic batch publishing came with 2.12 and received
// correctness fixes through 2026 (partial batches recovered after a restart,
// entries returned to a pool twice, batches of exactly the size limit
// refused, R1 commits storing the staged message rather than the checked
// one); 2.15.2 is the release whose source was checked for them and that the
// relay's contract tests (TestJetStreamAtomicBatch*) run against. Earlier
// patch releases of 2.12 and 2.14 may carry them as well; they were not
// verified.
const MinAtomicServer = "2.15.2"

// MaxBatchID is the longest Nats-Batch-Id JetStream accepts.
const MaxBatchID = 64

// checkAtomic refuses, for the atomic mode, a server older than
// MinAtomicServer, a stream that does not allow atomic batches, and a
// dead-letter subject (deadLetter, when dead-lettering) outside the stream. (A stream
// with persist_mode async is refused in every mode, and the server refuses
// it together with allow_atomic anyway.)
func checkAtomic(stream string, sc jetstream.StreamConfig, version, deadLetter string) error {
	var errs []error
	if deadLetter != "" && !Captures(sc.Subjects, deadLetter) {
		errs = append(errs, fmt.Errorf("dead-letter-subject: %q is not in stream %q: with --atomic-transactions a poison event's dead letter takes its place in its transaction's batch, so the stream must capture it: %w",
			deadLetter, stream, ErrConfig))
	}
	if !versionAtLeast(version, MinAtomicServer) {
		errs = append(errs, fmt.Errorf("atomic-transactions: the NATS server is %s; atomic batches need %s or later (earlier releases lack fixes the relay relies on): %w",
			version, MinAtomicServer, ErrConfig))
	}
	if !sc.AllowAtomicPublish {
		errs = append(errs, fmt.Errorf("atomic-transactions: stream %q does not allow atomic batches; set allow_atomic: true in its configuration, or run without --atomic-transactions: %w",
			stream, ErrConfig))
	}
	return errors.Join(errs...)
}

// versionAtLeast reports whether the server version v ("2.15.2",
// "2.16.0-beta.1") is at least min ("2.15.2"); a pre-release counts as its
// release. An unreadable version is not.
func versionAtLeast(v, min string) bool {
	have, ok1 := parseVersion(v)
	want, ok2 := parseVersion(min)
	if !ok1 || !ok2 {
		return false
	}
	for i := range have {
		if have[i] != want[i] {
			return have[i] > want[i]
		}
	}
	return true
}

func parseVersion(v string) ([3]int, bool) {
	var out [3]int
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return out, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[i] = n
	}
	return out, true
}

// DuplicateOf asks whether a message with id is in the stream's duplicate
// window, and at which sequence, without storing anything: JetStream refuses
// a whole atomic batch when one of its ids is there, and does not say which.
//
// The question is a publish to subject (which the stream must capture) of an
// empty message with the id and an expectation no message meets. On a stream
// with one replica JetStream checks the duplicate window before an expected
// last message id; on a replicated one before an expected last sequence,
// which is the expectation to use there (an expected last message id stops a
// replicated stream on a mismatch: TestJetStreamReplicatedStreamsNeedSequenceOnly).
// A duplicate is answered with its stored copy's sequence, anything else is
// refused. TestJetStreamDuplicateProbe checks both against real servers.
func (r *StreamReader) DuplicateOf(ctx context.Context, subject, id string, replicated bool) (uint64, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	msg := nats.NewMsg(subject)
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set(jetstream.ExpectedStreamHeader, r.stream)
	if replicated {
		msg.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(impossibleSeq, 10))
	} else {
		msg.Header.Set(jetstream.ExpectedLastMsgIDHeader, "outbox-relay-probe-"+nuid.Next())
	}
	reply, err := r.nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		return 0, false, fmt.Errorf("ask stream %q whether it holds message id %q: %w", r.stream, id, err)
	}
	ack, err := decodeReply(reply, r.stream)
	if err == nil && ack.Duplicate {
		return ack.Seq, true, nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeWrongLastMsgID || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
		return 0, false, nil
	}
	if err == nil {
		return 0, false, fmt.Errorf("ask stream %q whether it holds message id %q: the probe was stored at %d", r.stream, id, ack.Seq)
	}
	return 0, false, fmt.Errorf("ask stream %q whether it holds message id %q: %w", r.stream, id, err)
}

// impossibleSeq is a last sequence no stream reaches.
const impossibleSeq = 1 << 62
