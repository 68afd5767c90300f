package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/outbox-relay/outbox-relay/internal/metrics"
	"github.com/outbox-relay/outbox-relay/internal/testenv"
)

// validConfig is a Config that passes Validate, to change one thing at a
// time.
func validConfig() Config {
	return Config{
		NATSURL:         "nats://127.0.0.1:4222",
		Stream:          "OUTBOX",
		StateBucket:     "outbox-relay",
		StreamSubjects:  []string{"outbox.>"},
		DuplicateWindow: 2 * time.Minute,
		Replicas:        1,
		PublishTimeout:  time.Second,
		ConnectTimeout:  time.Second,
		RequestTimeout:  time.Second,
		ReconnectWait:   100 * time.Millisecond,
	}
}

func TestValidateTLSCertAndKeyGoTogether(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		cert, key string
		ok        bool
	}{
		{"neither", "", "", true},
		{"both", "client.crt", "client.key", true},
		{"cert only", "client.crt", "", false},
		{"key only", "", "client.key", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := validConfig()
			cfg.TLSCertFile, cfg.TLSKeyFile = c.cert, c.key
			err := cfg.Validate()
			if c.ok {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Contains(t, err.Error(), "nats-tls-cert, nats-tls-key: set both or neither")
		})
	}
	// A CA alone is fine: it only changes whom the relay trusts.
	cfg := validConfig()
	cfg.TLSCAFile = "ca.crt"
	require.NoError(t, cfg.Validate())
}

func TestRedactRemovesSecrets(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		cfg     Config
		err     string
		secrets []string
		want    string
	}{{
		name:    "password",
		cfg:     Config{User: "relay", Password: "pa55-word"},
		err:     `nats: authorization violation for relay/pa55-word`,
		secrets: []string{"pa55-word"},
		want:    `nats: authorization violation for relay/REDACTED`,
	}, {
		name:    "token, every occurrence",
		cfg:     Config{Token: "tok-123"},
		err:     `token tok-123 rejected (tok-123)`,
		secrets: []string{"tok-123"},
		want:    `token REDACTED rejected (REDACTED)`,
	}, {
		name:    "password in a malformed URL",
		cfg:     Config{NATSURL: "nats://relay:url-secret@127.0.0.1:bad"},
		err:     `parse "nats://relay:url-secret@127.0.0.1:bad": invalid port ":bad" after host`,
		secrets: []string{"url-secret"},
		want:    `parse "nats://relay:REDACTED@127.0.0.1:bad": invalid port ":bad" after host`,
	}, {
		name:    "token in the second of several URLs",
		cfg:     Config{NATSURL: "nats://127.0.0.1:4222, tls://url-token@[::1"},
		err:     `parse "tls://url-token@[::1": missing ']' in host`,
		secrets: []string{"url-token"},
		want:    `parse "tls://REDACTED@[::1": missing ']' in host`,
	}, {
		name:    "escaped and unescaped URL password",
		cfg:     Config{NATSURL: "nats://relay:p%40ss%2Fw0rd@127.0.0.1:4222/x"},
		err:     `p%40ss%2Fw0rd and p@ss/w0rd`,
		secrets: []string{"p%40ss%2Fw0rd", "p@ss/w0rd"},
		want:    `REDACTED and REDACTED`,
	}, {
		name:    "URL password with characters that end a URL elsewhere",
		cfg:     Config{NATSURL: "nats://relay:a?b#c/d@127.0.0.1:4222"},
		err:     `parse "nats://relay:a?b#c/d@127.0.0.1:4222": bad`,
		secrets: []string{"a?b#c/d"},
		want:    `parse "nats://relay:REDACTED@127.0.0.1:4222": bad`,
	}, {
		name:    "a secret containing another is replaced whole",
		cfg:     Config{Password: "abc", Token: "xxabcxx"},
		err:     `xxabcxx abc`,
		secrets: []string{"abc"},
		want:    `REDACTED REDACTED`,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := redact(errors.New(c.err), c.cfg).Error()
			require.Equal(t, c.want, got)
			for _, s := range c.secrets {
				require.NotContains(t, got, s)
			}
		})
	}

	// Nothing to hide: the very same error comes back, so errors.Is keeps
	// working.
	orig := errors.New("nats: no servers available for connection")
	require.Same(t, orig, redact(orig, Config{NATSURL: "nats://127.0.0.1:4222", Password: "unused"}))
}

// applyOptions applies opts to a fresh nats.Options.
func applyOptions(t *testing.T, opts []nats.Option) nats.Options {
	t.Helper()
	var o nats.Options
	for _, opt := range opts {
		require.NoError(t, opt(&o))
	}
	return o
}

func TestAuthOptions(t *testing.T) {
	t.Parallel()
	ca := testenv.NewCA(t, "")
	client := ca.ClientCert(t, "relay")
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := user.Seed()
	require.NoError(t, err)
	pub, err := user.PublicKey()
	require.NoError(t, err)
	seedFile := filepath.Join(t.TempDir(), "relay.nk")
	require.NoError(t, os.WriteFile(seedFile, seed, 0o600))

	t.Run("none", func(t *testing.T) {
		opts, err := authOptions(Config{})
		require.NoError(t, err)
		require.Empty(t, opts)
	})
	t.Run("user and password", func(t *testing.T) {
		opts, err := authOptions(Config{User: "relay", Password: "pw"})
		require.NoError(t, err)
		o := applyOptions(t, opts)
		require.Equal(t, "relay", o.User)
		require.Equal(t, "pw", o.Password)
		require.False(t, o.Secure)
	})
	t.Run("token", func(t *testing.T) {
		opts, err := authOptions(Config{Token: "tok"})
		require.NoError(t, err)
		require.Equal(t, "tok", applyOptions(t, opts).Token)
	})
	t.Run("nkey seed", func(t *testing.T) {
		opts, err := authOptions(Config{NKeySeedFile: seedFile})
		require.NoError(t, err)
		o := applyOptions(t, opts)
		require.Equal(t, pub, o.Nkey, "the public key is sent")
		require.NotNil(t, o.SignatureCB, "the seed signs the server's nonce")
	})
	t.Run("nkey seed file missing or invalid", func(t *testing.T) {
		_, err := authOptions(Config{NKeySeedFile: filepath.Join(t.TempDir(), "missing.nk")})
		require.ErrorContains(t, err, "nats-nkey-file")
		bad := filepath.Join(t.TempDir(), "bad.nk")
		require.NoError(t, os.WriteFile(bad, []byte("SUnotaseed-butsecret"), 0o600))
		_, err = authOptions(Config{NKeySeedFile: bad})
		require.ErrorContains(t, err, "nats-nkey-file")
		require.NotContains(t, err.Error(), "notaseed-butsecret", "the file's content is not quoted")
	})
	t.Run("creds", func(t *testing.T) {
		account, err := nkeys.CreateAccount()
		require.NoError(t, err)
		token, err := jwt.NewUserClaims(pub).Encode(account)
		require.NoError(t, err)
		content, err := jwt.FormatUserConfig(token, seed)
		require.NoError(t, err)
		credsFile := filepath.Join(t.TempDir(), "relay.creds")
		require.NoError(t, os.WriteFile(credsFile, content, 0o600))
		opts, err := authOptions(Config{CredsFile: credsFile})
		require.NoError(t, err)
		o := applyOptions(t, opts)
		require.NotNil(t, o.UserJWT)
		require.NotNil(t, o.SignatureCB)
		got, err := o.UserJWT()
		require.NoError(t, err)
		require.Equal(t, token, got, "the JWT is sent")
	})
	t.Run("TLS", func(t *testing.T) {
		opts, err := authOptions(Config{TLSCAFile: ca.CertFile, TLSCertFile: client.CertFile, TLSKeyFile: client.KeyFile})
		require.NoError(t, err)
		o := applyOptions(t, opts)
		require.True(t, o.Secure)
		require.NotNil(t, o.RootCAsCB)
		require.NotNil(t, o.TLSCertCB)
		cert, err := o.TLSCertCB()
		require.NoError(t, err)
		require.Equal(t, "relay", cert.Leaf.Subject.CommonName)
	})
	t.Run("CA file missing", func(t *testing.T) {
		opts, err := authOptions(Config{TLSCAFile: filepath.Join(t.TempDir(), "missing.crt")})
		require.NoError(t, err, "files are read when the options are applied")
		var o nats.Options
		require.ErrorContains(t, opts[0](&o), "rootCA file")
	})
}

// connectForTest runs Connect and closes the connection in cleanup.
func connectForTest(t *testing.T, cfg Config) *Connection {
	t.Helper()
	nc, err := Connect(cfg, zap.NewNop(), metrics.New("test", "test"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// requireCause waits until NotConnectedCause names want.
func requireCause(t *testing.T, nc *Connection, want string) {
	t.Helper()
	var last error
	require.Eventually(t, func() bool {
		last = nc.NotConnectedCause()
		return last != nil && strings.Contains(last.Error(), want)
	}, 10*time.Second, 20*time.Millisecond, "cause should mention %q, last: %v", want, &last)
}

// TestConnectTLSAndAuth runs Connect against a real server requiring TLS
// with verified client certificates and a password.
func TestConnectTLSAndAuth(t *testing.T) {
	t.Parallel()
	const password = "s3cret-pa55"
	ca := testenv.NewCA(t, "nats-ca")
	serverCert := ca.ServerCert(t).TLSCertificate(t)
	client := ca.ClientCert(t, "relay")
	n := testenv.StartNATS(t, testenv.WithNATSConfig(func(o *server.Options) {
		o.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool(),
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		}
		o.TLSVerify = true
		o.Username, o.Password = "relay", password
	}))
	good := validConfig()
	good.NATSURL = n.URL()
	good.User, good.Password = "relay", password
	good.TLSCAFile, good.TLSCertFile, good.TLSKeyFile = ca.CertFile, client.CertFile, client.KeyFile

	t.Run("connects", func(t *testing.T) {
		t.Parallel()
		nc := connectForTest(t, good)
		require.Eventually(t, nc.IsConnected, 10*time.Second, 20*time.Millisecond)
		require.NoError(t, nc.NotConnectedCause())
		state, err := nc.TLSConnectionState()
		require.NoError(t, err)
		require.True(t, state.HandshakeComplete)
	})
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		cfg := good
		cfg.Password = "wr0ng-pa55"
		nc := connectForTest(t, cfg)
		requireCause(t, nc, "Authorization Violation")
		// Well past two rejections the client is still trying, not closed.
		time.Sleep(15 * good.ReconnectWait)
		require.False(t, nc.IsClosed(), "the client must keep trying")
		requireCause(t, nc, "Authorization Violation")
		require.NotContains(t, nc.NotConnectedCause().Error(), "wr0ng-pa55")
	})
	t.Run("untrusted server CA", func(t *testing.T) {
		t.Parallel()
		cfg := good
		cfg.TLSCAFile = testenv.NewCA(t, "other-ca").CertFile
		requireCause(t, connectForTest(t, cfg), "certificate signed by unknown authority")
	})
	t.Run("no client certificate", func(t *testing.T) {
		t.Parallel()
		cfg := good
		cfg.TLSCertFile, cfg.TLSKeyFile = "", ""
		// TLS 1.3: the alert, or the connection closed after the handshake.
		nc := connectForTest(t, cfg)
		require.Eventually(t, func() bool {
			cause := nc.NotConnectedCause()
			return cause != nil && (strings.Contains(cause.Error(), "certificate required") || strings.Contains(cause.Error(), "closed by remote after TLS handshake"))
		}, 10*time.Second, 20*time.Millisecond)
	})
	t.Run("server down", func(t *testing.T) {
		t.Parallel()
		// The cause is the refused dial, not a bare "reconnecting".
		cfg := good
		cfg.NATSURL = fmt.Sprintf("nats://127.0.0.1:%d", testenv.FreePort(t))
		requireCause(t, connectForTest(t, cfg), "connection refused")
	})
	t.Run("missing CA file is a configuration error", func(t *testing.T) {
		t.Parallel()
		cfg := good
		cfg.TLSCAFile = filepath.Join(t.TempDir(), "missing.crt")
		_, err := Connect(cfg, zap.NewNop(), metrics.New("test", "test"))
		require.ErrorContains(t, err, "rootCA file")
	})
	t.Run("missing creds file is a configuration error", func(t *testing.T) {
		t.Parallel()
		cfg := good
		cfg.User, cfg.Password = "", ""
		cfg.CredsFile = filepath.Join(t.TempDir(), "missing.creds")
		_, err := Connect(cfg, zap.NewNop(), metrics.New("test", "test"))
		require.ErrorContains(t, err, "missing.creds")
	})
}

// TestConnectAuthRecoversAfterCredentialRotation: the client does not give up
// after the server rejected its password twice; once the server accepts it
// (rotated on the server side), the same connection gets in and JetStream
// works.
func TestConnectAuthRecoversAfterCredentialRotation(t *testing.T) {
	t.Parallel()
	var serverPassword atomic.Pointer[string]
	old, rotated := "old-pa55", "new-pa55"
	serverPassword.Store(&old)
	n := testenv.StartNATS(t, testenv.WithNATSConfig(func(o *server.Options) {
		o.Username, o.Password = "relay", *serverPassword.Load()
	}))
	cfg := validConfig()
	cfg.NATSURL = n.URL()
	cfg.User, cfg.Password = "relay", rotated
	cfg.CreateStream = true
	nc, err := Connect(cfg, zap.NewNop(), metrics.New("test", "test"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)

	requireCause(t, nc, "Authorization Violation")
	_, err = nc.EnsureStream(context.Background(), cfg, []string{"outbox.>"}, zap.NewNop())
	require.ErrorContains(t, err, "Authorization Violation", "the preflight error names the cause")
	require.NotContains(t, err.Error(), rotated)
	require.False(t, nc.IsClosed())

	serverPassword.Store(&rotated)
	n.Restart(t)
	require.Eventually(t, nc.IsConnected, 15*time.Second, 20*time.Millisecond, "the client reconnects with the rotated password")
	state, err := nc.EnsureStream(context.Background(), cfg, []string{"outbox.>"}, zap.NewNop())
	require.NoError(t, err)
	require.True(t, state.Created)
}
