package cdc

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"
)

// memoryStore is a PublicationFingerprintStore in memory.
type memoryStore struct {
	fp             PublicationFingerprint
	ok             bool
	loadErr, saves error
	saved          int
}

func (m *memoryStore) Load(context.Context) (PublicationFingerprint, bool, error) {
	return m.fp, m.ok, m.loadErr
}

func (m *memoryStore) Save(_ context.Context, fp PublicationFingerprint) error {
	if m.saves != nil {
		return m.saves
	}
	m.fp, m.ok = fp, true
	m.saved++
	return nil
}

func TestReconcilePublication(t *testing.T) {
	t.Parallel()
	const (
		old PublicationFingerprint = "publication=16400/730\nmember events=16412/726"
		now PublicationFingerprint = "publication=16400/730\nmember events=16413/731"
	)
	tests := []struct {
		name      string
		store     memoryStore
		accept    string
		wantErr   string // "" for none
		changed   bool   // a PublicationError of kind changed
		wantSaved PublicationFingerprint
	}{
		{name: "first start saves", store: memoryStore{}, wantSaved: now},
		{name: "unchanged", store: memoryStore{fp: now, ok: true}, wantSaved: now},
		{
			name: "changed while stopped", store: memoryStore{fp: old, ok: true}, changed: true, wantSaved: old,
			wantErr: "gone: [member events=16412/726], new: [member events=16413/731]",
		},
		{
			name: "another digest accepted", store: memoryStore{fp: old, ok: true}, accept: old.Digest(), changed: true, wantSaved: old,
			wantErr: "--accept-publication=" + now.Digest(),
		},
		{name: "change accepted", store: memoryStore{fp: old, ok: true}, accept: now.Digest(), wantSaved: now},
		{name: "load fails", store: memoryStore{loadErr: errors.New("kv down")}, wantErr: "load the publication fingerprint: kv down"},
		{name: "save fails", store: memoryStore{saves: errors.New("kv down")}, wantErr: "save the publication fingerprint: kv down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := validConfig()
			cfg.AcceptPublication = tt.accept
			store := tt.store
			err := ReconcilePublication(context.Background(), &store, cfg, now)
			if tt.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.wantErr)
			}
			var pubErr *PublicationError
			require.Equal(t, tt.changed, errors.As(err, &pubErr))
			if tt.changed {
				require.Equal(t, PublicationChanged, pubErr.Kind)
				require.ErrorIs(t, err, ErrPublication)
				require.ErrorIs(t, err, ErrConfig, "fatal: no retry")
			}
			require.Equal(t, tt.wantSaved, store.fp)
		})
	}
}

// TestTrackerGatedByVerifiedPosition: once gated, what is reported never
// passes the last verified position, whether it comes from acknowledged
// transactions or from an idle keepalive.
func TestTrackerGatedByVerifiedPosition(t *testing.T) {
	t.Parallel()
	tr := NewTracker(100)
	tr.Gate()
	tr.resume(100) // the slot's own position counts as verified
	require.Equal(t, pglogrepl.LSN(100), tr.Confirmed())
	require.True(t, tr.Idle(500))
	require.Equal(t, pglogrepl.LSN(100), tr.Confirmed(), "the WAL end is not verified yet")
	tr.Verified(300)
	require.Equal(t, pglogrepl.LSN(300), tr.Confirmed())
	tr.Verified(200) // never back
	require.Equal(t, pglogrepl.LSN(300), tr.Confirmed())
	txn := tr.Begin(t0)
	tr.Track(txn)
	tr.Commit(txn, 700)
	tr.Verified(900)
	require.Equal(t, pglogrepl.LSN(500), tr.Confirmed(), "the pending transaction still holds it")
	require.NoError(t, tr.Ack(txn))
	require.Equal(t, pglogrepl.LSN(700), tr.Confirmed())
}
