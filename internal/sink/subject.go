package sink

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
)

// ValidToken reports whether s can stand as one token of a NATS subject: not
// empty, valid UTF-8, and free of '.', the wildcards '*' and '>', white
// space (ASCII or Unicode: U+00A0, U+3000, ...), control characters and
// format characters (zero-width U+200B, U+FEFF, bidirectional marks, ...).
// Characters like these would make subjects that look alike but differ, or
// that other tools split or trim.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.', c == '*', c == '>', c <= ' ', c == 0x7f:
			return false
		case c >= utf8.RuneSelf:
			return validUnicodeToken(s[i:])
		}
	}
	return true
}

// validUnicodeToken is ValidToken for the rest of a token from its first
// non-ASCII byte.
func validUnicodeToken(s string) bool {
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], string(utf8.RuneError)):
			return false // invalid UTF-8
		case r == '.', r == '*', r == '>', r <= ' ', r == 0x7f:
			return false
		case r >= utf8.RuneSelf && (unicode.IsSpace(r) || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)):
			return false
		}
	}
	return true
}

// ValidSubject reports whether s is a valid subject; wildcards are allowed
// only when wildcards is true, '*' as a whole token and '>' as the last.
func ValidSubject(s string, wildcards bool) bool {
	tokens := strings.Split(s, ".")
	for i, t := range tokens {
		if wildcards && (t == "*" || (t == ">" && i == len(tokens)-1)) {
			continue
		}
		if !ValidToken(t) {
			return false
		}
	}
	return true
}

// Captures reports whether a stream with filters stores messages published
// to subject. subject may itself contain wildcards, in which case every
// subject it matches must be captured.
func Captures(filters []string, subject string) bool {
	for _, f := range filters {
		if subsetMatch(subject, f) {
			return true
		}
	}
	return false
}

// subsetMatch reports whether every subject matching subject also matches
// filter.
func subsetMatch(subject, filter string) bool {
	st := strings.Split(subject, ".")
	ft := strings.Split(filter, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) {
			return false
		}
		s := st[i]
		switch {
		case s == ">":
			return false
		case f == "*":
		case f != s || s == "*":
			return false
		}
	}
	return len(st) == len(ft)
}

// Overlap is a stream whose subjects overlap Subject: some message subject
// would be captured by both.
type Overlap struct {
	Subject  string
	Stream   string
	Subjects []string // the stream's subjects
}

func (o Overlap) String() string {
	return fmt.Sprintf("%q overlaps stream %q (subjects %s)", o.Subject, o.Stream, strings.Join(o.Subjects, ", "))
}

// Overlaps lists, for each of subjects, the streams whose subjects overlap
// it, as the server decides overlap. For a subject without wildcards that
// is the streams that capture it. Each request is bounded by timeout.
func Overlaps(ctx context.Context, js jetstream.JetStream, subjects []string, timeout time.Duration) ([]Overlap, error) {
	var out []Overlap
	for _, subject := range subjects {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		list := js.ListStreams(rctx, jetstream.WithStreamListSubject(subject))
		for info := range list.Info() {
			out = append(out, Overlap{Subject: subject, Stream: info.Config.Name, Subjects: info.Config.Subjects})
		}
		err := list.Err()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list the streams overlapping %q: %w", subject, err)
		}
	}
	return out, nil
}
