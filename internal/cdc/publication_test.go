package cdc

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestJudgePublication(t *testing.T) {
	t.Parallel()
	all := []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers", "created_at"}
	self := publishedRel{role: roleSelf, qualified: `"public"."outbox"`, columns: all}
	tests := []struct {
		name string
		info publicationInfo
		want []string // substrings of the error; none means accepted
	}{
		{"plain table", publicationInfo{exists: true, insert: true, published: []publishedRel{self}}, nil},
		{"before PostgreSQL 15: no column lists", publicationInfo{
			exists: true, insert: true,
			published: []publishedRel{{role: roleSelf, qualified: `"public"."outbox"`}},
		}, nil},
		{
			"no inserts",
			publicationInfo{exists: true, published: []publishedRel{self}},
			[]string{"does not publish inserts", `SET (publish = 'insert')`},
		},
		{
			"table missing",
			publicationInfo{exists: true, insert: true},
			[]string{"does not include", `ADD TABLE "public"."outbox"`},
		},
		{"partitions under their own names", publicationInfo{exists: true, insert: true, published: []publishedRel{
			{role: roleDescendant, qualified: `"public"."outbox_2026"`}, {role: roleDescendant, qualified: `"public"."outbox_2027"`},
		}}, []string{`"public"."outbox_2026", "public"."outbox_2027"`, `SET (publish_via_partition_root = true)`}},
		{"partition of a table published via root", publicationInfo{exists: true, insert: true, published: []publishedRel{
			{role: roleAncestor, qualified: `"public"."all_events"`},
		}}, []string{"is a partition of", `--table="public"."all_events"`}},
		{"row filter", publicationInfo{exists: true, insert: true, published: []publishedRel{
			{role: roleSelf, qualified: `"public"."outbox"`, rowFilter: "(event_type <> 'x')", columns: all},
		}}, []string{"row filter", "WHERE (event_type <> 'x')", "DROP TABLE", "ADD TABLE"}},
		{"column list without mapped columns", publicationInfo{exists: true, insert: true, published: []publishedRel{
			{role: roleSelf, qualified: `"public"."outbox"`, columns: all[:5]},
		}}, []string{"column list", "without headers, created_at"}},
		{"every problem at once", publicationInfo{exists: true, published: []publishedRel{
			{role: roleSelf, qualified: `"public"."outbox"`, rowFilter: "true", columns: all[1:]},
		}}, []string{"does not publish inserts", "row filter", "without id"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := judgePublication(validConfig(), tt.info)
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			for _, w := range tt.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
}
