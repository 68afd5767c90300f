package sink

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		token string
		want  bool
	}{
		{"orders", true},
		{"order-created_v2", true},
		{"ORDERS", true},
		{"0b7a8f4e-5a42-4c38-9f0e-7d0f6f1d2c11", true},
		{"ümlaut", true},
		{"a{b}c", true},
		{"$JS", true},
		{"a:b/c#d", true},
		{"", false},
		{".", false},
		{"a.b", false},
		{"*", false},
		{"a*", false},
		{">", false},
		{"a>", false},
		{" ", false},
		{"a b", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a\rb", false},
		{"\x00", false},
		{"a\x1fb", false},
		{"a\x7fb", false},
		{"счёт", true},
		{"請求書", true},
		{"🧾", true},
		{"facture-été", true},
		{"a\ufffdb", true},       // the replacement character itself is a character
		{"paid\u00a0now", false}, // no-break space
		{"paid\u3000", false},    // ideographic space
		{"\u2003", false},        // em space
		{"a\u2028b", false},      // line separator
		{"a\u0085b", false},      // next line (C1 control)
		{"a\u0080b", false},      // C1 control
		{"paid\u200b", false},    // zero-width space
		{"\ufeffpaid", false},    // zero-width no-break space (BOM)
		{"a\u200eb", false},      // left-to-right mark
		{"a\u00adb", false},      // soft hyphen
		{"é.b", false},
		{"é b", false},
		{"é*", false},
		{"a\xffb", false}, // invalid UTF-8
		{"é\xc3", false},  // truncated UTF-8
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.token), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, ValidToken(tt.token))
		})
	}
}

func TestValidSubject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		subject              string
		plain, withWildcards bool
	}{
		{"outbox", true, true},
		{"outbox.order.created", true, true},
		{"outbox.*", false, true},
		{"outbox.>", false, true},
		{"*", false, true},
		{">", false, true},
		{"*.*.>", false, true},
		{"outbox.>.x", false, false},
		{"outbox.a*", false, false},
		{"outbox.a>", false, false},
		{"", false, false},
		{".", false, false},
		{"outbox.", false, false},
		{".outbox", false, false},
		{"outbox..order", false, false},
		{"outbox.or der", false, false},
		{"outbox.order\n", false, false},
		{"outbox.order\t", false, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.subject), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.plain, ValidSubject(tt.subject, false), "without wildcards")
			require.Equal(t, tt.withWildcards, ValidSubject(tt.subject, true), "with wildcards")
		})
	}
}

func TestCaptures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		filters []string
		subject string
		want    bool
	}{
		// Literal subjects.
		{[]string{"outbox.>"}, "outbox.order.created", true},
		{[]string{"outbox.>"}, "outbox.order", true},
		{[]string{"outbox.>"}, "outbox", false},
		{[]string{"outbox.>"}, "other.order", false},
		{[]string{">"}, "a", true},
		{[]string{">"}, "a.b.c", true},
		{[]string{"*"}, "a", true},
		{[]string{"*"}, "a.b", false},
		{[]string{"outbox.*"}, "outbox.order", true},
		{[]string{"outbox.*"}, "outbox.order.created", false},
		{[]string{"outbox.*.created"}, "outbox.order.created", true},
		{[]string{"outbox.*.created"}, "outbox.order.deleted", false},
		{[]string{"a.*.c"}, "a.b.c", true},
		{[]string{"a.b.c"}, "a.b.c", true},
		{[]string{"a.b.c"}, "a.b", false},
		{[]string{"a.b"}, "a.b.c", false},
		{[]string{"a.b.c"}, "a.b.d", false},
		{[]string{"A.b"}, "a.b", false},
		// Several filters: any one capturing is enough.
		{[]string{"x.>", "outbox.*.*"}, "outbox.order.created", true},
		{[]string{"x.>", "y.*"}, "outbox.order", false},
		{nil, "outbox.order", false},
		{[]string{}, "outbox.order", false},
		// Wildcard subjects: every subject they match must be captured.
		{[]string{"outbox.>"}, "outbox.*.*", true},
		{[]string{"outbox.>"}, "outbox.*", true},
		{[]string{"outbox.>"}, "outbox.>", true},
		{[]string{"outbox.*.*"}, "outbox.*.*", true},
		{[]string{"outbox.*"}, "outbox.*.*", false},
		{[]string{"outbox.*.*"}, "outbox.*", false},
		{[]string{"outbox.*.*"}, "outbox.>", false},
		{[]string{"outbox.*"}, "outbox.>", false},
		{[]string{"outbox.order.*"}, "outbox.*.created", false},
		{[]string{"outbox.*.created"}, "outbox.order.*", false},
		{[]string{"outbox.*.>"}, "outbox.*.*", true},
		{[]string{"outbox.*.>"}, "outbox.*", false},
		{[]string{"outbox.*.>"}, "outbox.>", false},
		{[]string{">"}, ">", true},
		{[]string{">"}, "*", true},
		{[]string{"*"}, ">", false},
		{[]string{"*"}, "*", true},
		{[]string{"a.b"}, "a.*", false},
		{[]string{"*.b"}, "*.b", true},
		{[]string{"*.b"}, "*.*", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v captures %q", tt.filters, tt.subject), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Captures(tt.filters, tt.subject))
		})
	}
}

// TestSubsetMatchAgainstEnumeration checks subsetMatch against its
// definition on a small alphabet: subject ⊆ filter exactly when every literal
// subject matching subject also matches filter.
func TestSubsetMatchAgainstEnumeration(t *testing.T) {
	t.Parallel()
	tokens := []string{"a", "b", "*", ">"}
	var patterns []string
	var gen func(prefix string, depth int)
	gen = func(prefix string, depth int) {
		if depth == 3 {
			return
		}
		for _, tok := range tokens {
			p := tok
			if prefix != "" {
				p = prefix + "." + tok
			}
			if ValidSubject(p, true) {
				patterns = append(patterns, p)
			}
			if tok != ">" {
				gen(p, depth+1)
			}
		}
	}
	gen("", 0)

	// Literal subjects up to 5 tokens over {a, b, c}: c stands for any
	// token neither pattern names.
	var literals []string
	var lit func(prefix string, depth int)
	lit = func(prefix string, depth int) {
		if depth == 5 {
			return
		}
		for _, tok := range []string{"a", "b", "c"} {
			p := tok
			if prefix != "" {
				p = prefix + "." + tok
			}
			literals = append(literals, p)
			lit(p, depth+1)
		}
	}
	lit("", 0)

	for _, subject := range patterns {
		for _, filter := range patterns {
			// Patterns have at most 3 tokens, so '>' matching more than 4
			// tokens adds nothing the 5-token literals do not show.
			want := true
			for _, l := range literals {
				if matches(subject, l) && !matches(filter, l) {
					want = false
					break
				}
			}
			require.Equal(t, want, subsetMatch(subject, filter), "subsetMatch(%q, %q)", subject, filter)
		}
	}
}

// matches reports whether the literal subject s matches pattern p.
func matches(p, s string) bool {
	pt := splitDots(p)
	st := splitDots(s)
	for i, tok := range pt {
		if tok == ">" {
			return len(st) > i
		}
		if i >= len(st) || (tok != "*" && tok != st[i]) {
			return false
		}
	}
	return len(pt) == len(st)
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
