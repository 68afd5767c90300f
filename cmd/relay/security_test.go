package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/outbox-relay/outbox-relay/internal/e2e"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// The tests in this file run the relay binary against PostgreSQL and NATS
// servers that demand TLS and authentication, and check that it relays
// through them, that a rejected connection is one clear error retried with
// backoff while the process stays up, and that no secret reaches its log,
// its command output or /metrics.

// ---------------------------------------------------------------------------
// PostgreSQL

// tlsPostgres is a fixture whose PostgreSQL accepts TCP only over TLS, and
// role relay only with a client certificate (pg_hba "cert"), for ordinary
// and replication connections alike.
type tlsPostgres struct {
	*fixture
	ca     *testenv.CA
	client *testenv.KeyPair // CN=relay, issued by ca
}

func newTLSPostgres(t *testing.T) *tlsPostgres {
	t.Helper()
	ca := testenv.NewCA(t, "postgres-ca")
	srv := ca.ServerCert(t) // 127.0.0.1 and localhost
	f := newFixture(t,
		// Written into the data directory, owned by the server's user with
		// mode 0600, as postgres insists for its key.
		testenv.WithPostgresFile("server.crt", srv.CertPEM),
		testenv.WithPostgresFile("server.key", srv.KeyPEM),
		testenv.WithPostgresFile("root.crt", ca.CertPEM),
		testenv.WithPostgresConfig("ssl", "on"),
		testenv.WithPostgresConfig("ssl_cert_file", "server.crt"),
		testenv.WithPostgresConfig("ssl_key_file", "server.key"),
		testenv.WithPostgresConfig("ssl_ca_file", "root.crt"),
		testenv.WithPostgresHBA(
			"hostssl all relay 127.0.0.1/32 cert",
			"hostssl replication relay 127.0.0.1/32 cert",
			"hostnossl all all 127.0.0.1/32 reject",
			"hostnossl replication all 127.0.0.1/32 reject",
		),
	)
	f.pg.Exec(t, f.db, `CREATE ROLE relay LOGIN REPLICATION; GRANT SELECT ON events TO relay; ALTER TABLE events OWNER TO relay; GRANT CREATE ON DATABASE app TO relay;`)
	return &tlsPostgres{fixture: f, ca: ca, client: ca.ClientCert(t, "relay")}
}

// url is a connection URL for role relay verifying the server against the
// CA certificate in rootCert, presenting client when it is not nil.
func (p *tlsPostgres) url(rootCert string, client *testenv.KeyPair) string {
	q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {rootCert}}
	if client != nil {
		q.Set("sslcert", client.CertFile)
		q.Set("sslkey", client.KeyFile)
	}
	return fmt.Sprintf("postgres://relay@127.0.0.1:%d/%s?%s", p.pg.Port(), p.db, q.Encode())
}

// TestPostgresTLSWithClientCertificate: with sslmode=verify-full and a
// client certificate the relay checks, relays and reports status; every one
// of its sessions, the replication one included, is TLS and authenticated
// by the certificate. Without TLS, or without the certificate, PostgreSQL
// refuses, so the relay really went through TLS.
func TestPostgresTLSWithClientCertificate(t *testing.T) {
	t.Parallel()
	p := newTLSPostgres(t)
	pgURL := p.url(p.ca.CertFile, p.client)

	code, out := runCommand(t, p.bin, p.env("RELAY_POSTGRES_URL", pgURL), "check")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "replication connection accepted")

	relay := p.startRelay(t, "RELAY_POSTGRES_URL", pgURL)
	p.write(t, 5, "pg-tls")
	p.waitStream(t, 5, 30*time.Second)
	p.verify(t)

	// The leader lock, the slot monitor and the walsender all belong to
	// role relay; each must be TLS with the relay's certificate.
	conn := p.pg.Connect(t, "postgres")
	var sessions, tlsByCert, walsenders int
	err := conn.QueryRow(context.Background(), `
		SELECT count(*),
		       count(*) FILTER (WHERE s.ssl AND s.client_dn = '/CN=relay'),
		       count(*) FILTER (WHERE a.backend_type = 'walsender')
		FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
		WHERE a.usename = 'relay'`).Scan(&sessions, &tlsByCert, &walsenders)
	require.NoError(t, err)
	require.GreaterOrEqual(t, sessions, 2, "the leader lock and the replication connection")
	require.Equal(t, sessions, tlsByCert, "every relay session is TLS with the client certificate")
	require.Equal(t, 1, walsenders, "the replication connection is among them")

	code, out = runCommand(t, p.bin, p.env("RELAY_POSTGRES_URL", pgURL), "status")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "messages:            5")
	require.Contains(t, out, "consistency:         ok")
	_, _ = relay.Stop(30 * time.Second)

	plain := fmt.Sprintf("postgres://relay@127.0.0.1:%d/%s?sslmode=disable", p.pg.Port(), p.db)
	code, out = runCommand(t, p.bin, p.env("RELAY_POSTGRES_URL", plain), "check")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "no encryption", "a connection without TLS is refused")

	code, out = runCommand(t, p.bin, p.env("RELAY_POSTGRES_URL", p.url(p.ca.CertFile, nil)), "check")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "certificate", "a TLS connection without a client certificate is refused")
}

// TestPostgresTLSRejectedIsRetriedWithBackoff: when TLS fails, because the
// relay does not trust the server's CA or the server does not trust the
// relay's certificate, the relay logs one clear error per attempt, retries
// with growing backoff instead of hammering, and keeps running; both with
// leader election (the lock connection is the first to fail) and without
// (preflight is).
func TestPostgresTLSRejectedIsRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	p := newTLSPostgres(t)
	other := testenv.NewCA(t, "other-ca")
	const reconnectMax = 4 * time.Second

	cases := []struct {
		name   string
		pgURL  string
		env    []string
		msg    string // the retry log line
		reason string // what the error must say
	}{{
		name:   "untrusted server CA, leader election",
		pgURL:  p.url(other.CertFile, p.client),
		msg:    "leader election connection failed, retrying",
		reason: "certificate signed by unknown authority",
	}, {
		name:   "untrusted server CA, no leader election",
		pgURL:  p.url(other.CertFile, p.client),
		env:    []string{"RELAY_LEADER_ELECTION", "false"},
		msg:    "postgres preflight failed, retrying",
		reason: "certificate signed by unknown authority",
	}, {
		name:  "client certificate from an untrusted CA",
		pgURL: p.url(p.ca.CertFile, other.ClientCert(t, "relay")),
		env:   []string{"RELAY_LEADER_ELECTION", "false"},
		msg:   "postgres preflight failed, retrying",
		// Go's TLS client sends no certificate the server's CA list rules
		// out, so it is the server that explains.
		reason: "connection requires a valid client certificate",
	}}
	relays := make([]*e2e.Relay, len(cases))
	for i, c := range cases {
		env := append([]string{"RELAY_POSTGRES_URL", c.pgURL, "RELAY_RECONNECT_MIN", "500ms", "RELAY_RECONNECT_MAX", reconnectMax.String()}, c.env...)
		relays[i] = e2e.StartRelay(t, p.bin, p.env(env...))
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := relays[i]
			requireBackoffRetries(t, r, c.msg, reconnectMax, c.reason)
			require.False(t, r.Exited(), "the relay keeps running")
		})
	}
}

// ---------------------------------------------------------------------------
// NATS

// newNATSFixture is newFixture with a NATS server configured by natsCfg and
// the test's own client connected with clientOpts.
func newNATSFixture(t *testing.T, natsCfg func(*server.Options), clientOpts ...nats.Option) *fixture {
	t.Helper()
	f := &fixture{db: "app", bin: e2e.BuildRelay(t)}
	f.pg = testenv.StartPostgres(t)
	f.pg.CreateDatabase(t, f.db)
	e2e.SetupOutbox(t, f.pg, f.db)
	f.nats = testenv.StartNATS(t, testenv.WithNATSConfig(natsCfg))
	f.nc = f.nats.Connect(t, clientOpts...)
	f.writer = e2e.NewWriter(t, f.pg.AdminURL(f.db), 8)
	return f
}

// natsTLS makes the server require TLS with a certificate from ca; with
// verifyClients it also requires and verifies client certificates.
func natsTLS(t *testing.T, ca *testenv.CA, verifyClients bool) func(*server.Options) {
	t.Helper()
	cert := ca.ServerCert(t).TLSCertificate(t)
	return func(o *server.Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		o.TLSTimeout = 5
		if verifyClients {
			o.TLSConfig.ClientCAs = ca.Pool()
			o.TLSConfig.ClientAuth = tls.RequireAndVerifyClientCert
			o.TLSVerify = true
		}
	}
}

// relayConn returns the server's view of the relay's client connection.
func relayConn(t *testing.T, n *testenv.NATS) *server.ConnInfo {
	t.Helper()
	connz, err := n.Server().Connz(&server.ConnzOptions{Username: true})
	require.NoError(t, err)
	for _, c := range connz.Conns {
		if c.Name == "outbox-relay" {
			return c
		}
	}
	require.FailNow(t, "the relay has no connection to NATS")
	return nil
}

// requireNoSecrets fails when any text holds any secret.
func requireNoSecrets(t *testing.T, texts map[string]string, secrets ...string) {
	t.Helper()
	for name, text := range texts {
		for _, s := range secrets {
			require.NotContains(t, text, s, "%s leaks a secret", name)
		}
	}
}

// TestNATSMutualTLSWithPasswordFromFile: against a server requiring TLS
// with verified client certificates and a user/password, the relay relays
// with --nats-tls-ca/-cert/-key and the password from
// RELAY_NATS_PASSWORD_FILE; the server sees it connected over TLS with its
// certificate as that user; check and status work the same way, and the
// password never reaches the log, the output or /metrics.
func TestNATSMutualTLSWithPasswordFromFile(t *testing.T) {
	t.Parallel()
	const password = "n4ts-Pa55word-s3cret"
	ca := testenv.NewCA(t, "nats-ca")
	relayCert, testCert := ca.ClientCert(t, "outbox-relay"), ca.ClientCert(t, "test-client")
	useTLS := natsTLS(t, ca, true)
	f := newNATSFixture(t, func(o *server.Options) {
		useTLS(o)
		o.Users = []*server.User{{Username: "relay", Password: password}, {Username: "test", Password: "test-password"}}
	}, nats.RootCAs(ca.CertFile), nats.ClientCert(testCert.CertFile, testCert.KeyFile), nats.UserInfo("test", "test-password"))
	auth := []string{
		"RELAY_NATS_TLS_CA", ca.CertFile,
		"RELAY_NATS_TLS_CERT", relayCert.CertFile,
		"RELAY_NATS_TLS_KEY", relayCert.KeyFile,
		"RELAY_NATS_USER", "relay",
		"RELAY_NATS_PASSWORD_FILE", writeSecretFile(t, password+"\n"),
	}

	code, checkOut := runCommand(t, f.bin, f.env(auth...), "check")
	require.Equal(t, 0, code, checkOut)
	relay := f.startRelay(t, auth...)
	f.write(t, 5, "nats-tls")
	f.waitStream(t, 5, 30*time.Second)
	f.verify(t)

	c := relayConn(t, f.nats)
	require.Equal(t, "relay", c.AuthorizedUser)
	require.NotEmpty(t, c.TLSVersion, "the relay's connection is TLS")
	require.NotEmpty(t, c.TLSPeerCerts, "the relay presented a client certificate")
	require.Contains(t, c.TLSPeerCerts[0].Subject, "CN=outbox-relay")

	code, statusOut := runCommand(t, f.bin, f.env(auth...), "status")
	require.Equal(t, 0, code, statusOut)
	require.Contains(t, statusOut, "messages:            5")
	_, metrics := relay.Get("/metrics")
	require.Contains(t, metrics, "outbox_relay_sink_connected 1")
	_, _ = relay.Stop(30 * time.Second)
	requireNoSecrets(t, map[string]string{"log": relay.Logs(), "check": checkOut, "status": statusOut, "/metrics": metrics}, password)
}

// TestNATSAuthRejectedIsRetriedAndSecretsNeverLeak: a wrong password (and,
// separately, a missing client certificate) is one clear error, retried with
// backoff, and the relay stays up; once the server accepts the credentials
// (rotated on the server side), the same process connects and relays. No
// password, right or wrong, is ever shown.
func TestNATSAuthRejectedIsRetriedAndSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const right, wrong = "r1ght-Pa55word-s3cret", "wr0ng-Pa55word-s3cret"
	var serverPassword atomic.Pointer[string]
	initial := right
	serverPassword.Store(&initial)
	ca := testenv.NewCA(t, "nats-ca")
	relayCert, testCert := ca.ClientCert(t, "outbox-relay"), ca.ClientCert(t, "test-client")
	useTLS := natsTLS(t, ca, true)
	f := newNATSFixture(t, func(o *server.Options) {
		useTLS(o)
		o.Users = []*server.User{{Username: "relay", Password: *serverPassword.Load()}, {Username: "test", Password: "test-password"}}
	}, nats.RootCAs(ca.CertFile), nats.ClientCert(testCert.CertFile, testCert.KeyFile), nats.UserInfo("test", "test-password"))
	const reconnectMax = 4 * time.Second
	base := []string{
		"RELAY_NATS_TLS_CA", ca.CertFile,
		"RELAY_NATS_USER", "relay",
		"RELAY_NATS_PASSWORD_FILE", writeSecretFile(t, wrong+"\n"),
		"RELAY_NATS_REQUEST_TIMEOUT", "1s",
		"RELAY_RECONNECT_MIN", "500ms",
		"RELAY_RECONNECT_MAX", reconnectMax.String(),
	}
	withCert := append([]string{"RELAY_NATS_TLS_CERT", relayCert.CertFile, "RELAY_NATS_TLS_KEY", relayCert.KeyFile}, base...)

	bad := e2e.StartRelay(t, f.bin, f.env(withCert...))
	// The right password, so the missing certificate is the only problem,
	// and a slot of its own, so it does not stand by behind the other.
	noCert := e2e.StartRelay(t, f.bin, f.env(append(slices.Clone(base), "RELAY_NATS_PASSWORD_FILE", writeSecretFile(t, right), "RELAY_SLOT", "no_cert")...))

	requireBackoffRetries(t, bad, "stream preflight failed, retrying", reconnectMax, "Authorization Violation")
	// With TLS 1.3 the server checks the client's certificate after the
	// client's side of the handshake is done, so the client learns of the
	// refusal either from the server's alert or as the connection closed
	// right after the handshake (which nats.go words as such).
	requireBackoffRetries(t, noCert, "stream preflight failed, retrying", reconnectMax,
		"tls: certificate required", "connection closed by remote after TLS handshake")
	require.False(t, bad.Exited())
	require.False(t, noCert.Exited())
	_, badMetrics := bad.Get("/metrics")
	require.Contains(t, badMetrics, "outbox_relay_sink_connected 0")
	_, _ = noCert.Stop(30 * time.Second)

	code, statusOut := runCommand(t, f.bin, f.env(withCert...), "status")
	require.Equal(t, 1, code, statusOut)
	code, checkOut := runCommand(t, f.bin, f.env(withCert...), "check")
	require.Equal(t, 1, code, checkOut)

	// Rotate the server to the password the relay has: the client kept
	// trying instead of giving up after two rejections, so it gets in.
	rotated := wrong
	serverPassword.Store(&rotated)
	f.nats.Restart(t)
	waitReady(t, bad)
	f.write(t, 3, "rotated")
	f.waitStream(t, 3, 30*time.Second)
	f.verify(t)
	_, goodMetrics := bad.Get("/metrics")
	_, _ = bad.Stop(30 * time.Second)

	requireNoSecrets(t, map[string]string{
		"log": bad.Logs(), "log without certificate": noCert.Logs(), "status": statusOut, "check": checkOut,
		"/metrics while rejected": badMetrics, "/metrics": goodMetrics,
	}, right, wrong)
}

// TestNATSAuthTokenFromFile: with server-side TLS only (--nats-tls-ca) and
// token authentication, the relay relays with the token from
// RELAY_NATS_TOKEN_FILE, and the token is never shown; a wrong token is
// retried with a clear error.
func TestNATSAuthTokenFromFile(t *testing.T) {
	t.Parallel()
	const token = "t0ken-s3cret-abcdef"
	ca := testenv.NewCA(t, "nats-ca")
	useTLS := natsTLS(t, ca, false)
	f := newNATSFixture(t, func(o *server.Options) {
		useTLS(o)
		o.Authorization = token
	}, nats.RootCAs(ca.CertFile), nats.Token(token))
	auth := []string{"RELAY_NATS_TLS_CA", ca.CertFile, "RELAY_NATS_TOKEN_FILE", writeSecretFile(t, token+"\n")}

	relay := f.startRelay(t, auth...)
	f.write(t, 4, "token")
	f.waitStream(t, 4, 30*time.Second)
	f.verify(t)
	require.NotEmpty(t, relayConn(t, f.nats).TLSVersion)
	code, statusOut := runCommand(t, f.bin, f.env(auth...), "status")
	require.Equal(t, 0, code, statusOut)
	_, metrics := relay.Get("/metrics")
	_, _ = relay.Stop(30 * time.Second)

	const wrongToken = "wr0ng-t0ken-ghijkl"
	bad := e2e.StartRelay(t, f.bin, f.env("RELAY_NATS_TLS_CA", ca.CertFile, "RELAY_NATS_TOKEN_FILE", writeSecretFile(t, wrongToken),
		"RELAY_NATS_REQUEST_TIMEOUT", "1s", "RELAY_RECONNECT_MIN", "500ms", "RELAY_RECONNECT_MAX", "4s"))
	requireBackoffRetries(t, bad, "stream preflight failed, retrying", 4*time.Second, "Authorization Violation")
	_, _ = bad.Stop(30 * time.Second)

	requireNoSecrets(t, map[string]string{"log": relay.Logs(), "status": statusOut, "/metrics": metrics, "log with a wrong token": bad.Logs()},
		token, wrongToken)
}

// TestNATSAuthNKeySeedFile: the relay authenticates with an NKey seed file
// (--nats-nkey-file) to a server that knows only the public key; the seed is
// never shown.
func TestNATSAuthNKeySeedFile(t *testing.T) {
	t.Parallel()
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := user.Seed()
	require.NoError(t, err)
	pub, err := user.PublicKey()
	require.NoError(t, err)
	f := newNATSFixture(t, func(o *server.Options) {
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
		o.Users = []*server.User{{Username: "test", Password: "test-password"}}
	}, nats.UserInfo("test", "test-password"))
	auth := []string{"RELAY_NATS_NKEY_FILE", writeSecretFile(t, string(seed)+"\n")}

	relay := f.startRelay(t, auth...)
	f.write(t, 4, "nkey")
	f.waitStream(t, 4, 30*time.Second)
	f.verify(t)
	require.Equal(t, pub, relayConn(t, f.nats).AuthorizedUser)
	code, statusOut := runCommand(t, f.bin, f.env(auth...), "status")
	require.Equal(t, 0, code, statusOut)
	_, metrics := relay.Get("/metrics")
	_, _ = relay.Stop(30 * time.Second)
	requireNoSecrets(t, map[string]string{"log": relay.Logs(), "status": statusOut, "/metrics": metrics}, string(seed))
}

// TestNATSAuthCredsFile: decentralized (operator mode) authentication with a
// .creds file (--nats-creds) holding a user JWT and seed, against a server
// trusting only the operator, with JetStream enabled for the account by its
// JWT; the seed is never shown.
func TestNATSAuthCredsFile(t *testing.T) {
	t.Parallel()
	operator, err := nkeys.CreateOperator()
	require.NoError(t, err)
	operatorPub, err := operator.PublicKey()
	require.NoError(t, err)
	resolver := &server.MemAccResolver{}
	account := func(name string, jetStream bool) nkeys.KeyPair {
		kp, err := nkeys.CreateAccount()
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		claims := jwt.NewAccountClaims(pub)
		claims.Name = name
		if jetStream {
			claims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		token, err := claims.Encode(operator)
		require.NoError(t, err)
		require.NoError(t, resolver.Store(pub, token))
		return kp
	}
	sys, app := account("SYS", false), account("APP", true)
	sysPub, err := sys.PublicKey()
	require.NoError(t, err)
	creds := func(name string) (path string, seed []byte) {
		user, err := nkeys.CreateUser()
		require.NoError(t, err)
		pub, err := user.PublicKey()
		require.NoError(t, err)
		seed, err = user.Seed()
		require.NoError(t, err)
		claims := jwt.NewUserClaims(pub)
		claims.Name = name
		token, err := claims.Encode(app)
		require.NoError(t, err)
		content, err := jwt.FormatUserConfig(token, seed)
		require.NoError(t, err)
		path = filepath.Join(t.TempDir(), name+".creds")
		require.NoError(t, os.WriteFile(path, content, 0o600))
		return path, seed
	}
	relayCreds, relaySeed := creds("relay")
	testCreds, _ := creds("test")
	f := newNATSFixture(t, func(o *server.Options) {
		o.TrustedKeys = []string{operatorPub}
		o.AccountResolver = resolver
		o.SystemAccount = sysPub
	}, nats.UserCredentials(testCreds))
	auth := []string{"RELAY_NATS_CREDS", relayCreds}

	relay := f.startRelay(t, auth...)
	f.write(t, 4, "creds")
	f.waitStream(t, 4, 30*time.Second)
	f.verify(t)
	code, statusOut := runCommand(t, f.bin, f.env(auth...), "status")
	require.Equal(t, 0, code, statusOut)
	_, metrics := relay.Get("/metrics")
	_, _ = relay.Stop(30 * time.Second)
	requireNoSecrets(t, map[string]string{"log": relay.Logs(), "status": statusOut, "/metrics": metrics}, string(relaySeed))
}

// TestSecretsInNATSURLAreRedacted: credentials embedded in --nats-url never
// appear, not even when the URL is malformed and the client's parse error
// quotes it.
func TestSecretsInNATSURLAreRedacted(t *testing.T) {
	t.Parallel()
	bin := e2e.BuildRelay(t)
	for _, natsURL := range []string{
		"nats://relay:url-Pa55word-s3cret@127.0.0.1:notaport",
		"nats://url-t0ken-s3cret@[::1",
	} {
		env := map[string]string{
			"RELAY_POSTGRES_URL": "postgres://relay@127.0.0.1:1/app?sslmode=disable",
			"RELAY_NATS_URL":     natsURL,
			"RELAY_HTTP_ADDR":    fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		}
		code, out := runCommand(t, bin, env, "run")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "connect to nats")
		require.Contains(t, out, "REDACTED")
		require.NotContains(t, out, "s3cret")
	}
}

// ---------------------------------------------------------------------------
// Log checks

// logLine is one JSON log line of a retry.
type logLine struct {
	TS      string  `json:"ts"`
	Msg     string  `json:"msg"`
	Attempt int     `json:"attempt"`
	Backoff float64 `json:"backoff"` // seconds
	Error   string  `json:"error"`
}

// linesWithMsg returns the relay's JSON log lines whose message is msg.
func linesWithMsg(logs, msg string) []logLine {
	var out []logLine
	for _, line := range strings.Split(logs, "\n") {
		var l logLine
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// requireBackoffRetries waits until r has logged msg four times and checks
// that those retries explain themselves with one of reasons (with a single
// reason, the very same error every time); that attempts count up; that the
// backoff grows but stays within max; and that the relay did wait each
// backoff out before the next attempt (the log timestamps are that far
// apart), so it cannot hammer the server.
func requireBackoffRetries(t *testing.T, r *e2e.Relay, msg string, maxBackoff time.Duration, reasons ...string) {
	t.Helper()
	require.Eventually(t, func() bool { return len(linesWithMsg(r.Logs(), msg)) >= 4 || r.Exited() }, 60*time.Second, 100*time.Millisecond,
		"%q should be logged repeatedly", msg)
	require.False(t, r.Exited(), "the relay must not exit")
	lines := linesWithMsg(r.Logs(), msg)
	var prev time.Time
	for i, l := range lines {
		require.Equal(t, i+1, l.Attempt, "attempts count up: %+v", lines)
		require.True(t, slices.ContainsFunc(reasons, func(reason string) bool {
			return strings.Contains(strings.ToLower(l.Error), strings.ToLower(reason))
		}), "the error says why (%s): %s", strings.Join(reasons, " or "), l.Error)
		if len(reasons) == 1 {
			require.Equal(t, lines[0].Error, l.Error, "the same single error each time")
		}
		require.LessOrEqual(t, l.Backoff, maxBackoff.Seconds(), "backoff is capped")
		require.Positive(t, l.Backoff)
		ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", l.TS)
		require.NoError(t, err)
		if i > 0 {
			gap := ts.Sub(prev).Seconds()
			require.GreaterOrEqual(t, gap, lines[i-1].Backoff-0.01, "attempt %d came before the backoff of attempt %d was over: %+v", i+1, i, lines)
		}
		prev = ts
	}
	require.Greater(t, lines[2].Backoff, lines[0].Backoff, "backoff grows: %+v", lines)
	require.Less(t, len(lines), 20, "no hammering")
}
