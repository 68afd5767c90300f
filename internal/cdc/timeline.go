package cdc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrDiverged marks a server whose WAL does not hold what the relay already
// published: a failover promoted a standby that lacked it, and the new
// timeline hands out the same positions again. Errors wrapping it wrap
// ErrSlot too: the relay stops.
var ErrDiverged = errors.New("server WAL diverged from what the relay published")

// Published is how far the relay got: the commit LSN of the last transaction
// it published (or handed on to be published), and the timeline it read
// that from (0: not known).
type Published struct {
	CommitLSN pglogrepl.LSN
	Timeline  int32
}

// ServerWAL is what a server says about its WAL: the timeline it writes and
// how far its WAL is flushed (IDENTIFY_SYSTEM), and where each earlier
// timeline of its history ended (TIMELINE_HISTORY).
type ServerWAL struct {
	Timeline int32
	Flush    pglogrepl.LSN
	// Ended maps each ancestor timeline to the position where the next
	// one branched off it.
	Ended map[int32]pglogrepl.LSN
}

// TimelineStore keeps the timeline the relay last streamed from, where the
// stream's retention cannot reach it: with the high-water mark it says on
// which timeline the mark's position was read. Load reports false when
// nothing was saved; Save returns once the record is durable.
type TimelineStore interface {
	Load(ctx context.Context) (int32, bool, error)
	Save(ctx context.Context, timeline int32) error
}

// CheckHistory is the rule that keeps a failover from skipping events: the
// server's WAL must hold every transaction the relay published. It holds
// when the last commit published lies before the server's flushed WAL end
// and, when it was read from an earlier timeline, before the point where the
// server's history left that timeline. Otherwise the server is a standby
// promoted without that WAL (or another branch of the cluster's history),
// whose new transactions reuse positions the relay takes for published, and
// the error (wrapping ErrDiverged and ErrSlot) explains it and the recovery.
func CheckHistory(pub Published, wal ServerWAL) error {
	if pub.CommitLSN == 0 {
		return nil
	}
	var why string
	switch ended, ok := wal.Ended[pub.Timeline]; {
	case pub.Timeline != 0 && pub.Timeline > wal.Timeline:
		why = fmt.Sprintf("the server is on timeline %d, older than timeline %d the relay read it from (is it an old primary, or a standby promoted earlier?)",
			wal.Timeline, pub.Timeline)
	case pub.Timeline != 0 && pub.Timeline < wal.Timeline && !ok:
		why = fmt.Sprintf("timeline %d the relay read it from is not in the history of the server's timeline %d", pub.Timeline, wal.Timeline)
	case pub.Timeline != 0 && pub.Timeline < wal.Timeline && pub.CommitLSN >= ended:
		why = fmt.Sprintf("the server's history left timeline %d at %s, before that transaction: the standby promoted to timeline %d had not received it",
			pub.Timeline, ended, wal.Timeline)
	case pub.CommitLSN >= wal.Flush:
		why = fmt.Sprintf("the server's WAL (timeline %d) ends at %s, before that transaction", wal.Timeline, wal.Flush)
	default:
		return nil
	}
	return fmt.Errorf("timeline: the server's WAL diverged from what the relay published: the relay published events up to the transaction committing at %s, but %s. "+
		"Those events are on the stream and not in this database, and transactions committed here since reuse their positions, so resuming would skip them. "+
		"Nothing was published from this server; see the README's failover recovery: %w: %w",
		pub.CommitLSN, why, ErrDiverged, ErrSlot)
}

// ReadServerWAL runs IDENTIFY_SYSTEM and, past timeline 1, TIMELINE_HISTORY
// on conn, a replication connection (physical or logical).
func ReadServerWAL(ctx context.Context, conn *pgconn.PgConn) (ServerWAL, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return ServerWAL{}, fmt.Errorf("identify system: %w", err)
	}
	wal := ServerWAL{Timeline: sys.Timeline, Flush: sys.XLogPos}
	if sys.Timeline <= 1 {
		return wal, nil
	}
	hist, err := pglogrepl.TimelineHistory(ctx, conn, sys.Timeline)
	if err != nil {
		return ServerWAL{}, fmt.Errorf("read the history of timeline %d: %w", sys.Timeline, err)
	}
	if wal.Ended, err = parseHistory(hist.Content); err != nil {
		return ServerWAL{}, fmt.Errorf("read the history of timeline %d: %w", sys.Timeline, err)
	}
	return wal, nil
}

// ServerHistory is ReadServerWAL on a replication connection of its own,
// for one-off commands.
func ServerHistory(ctx context.Context, cfg Config) (ServerWAL, error) {
	conn, err := connect(ctx, cfg, true)
	if err != nil {
		return ServerWAL{}, err
	}
	defer closeConn(conn, cfg.ConnectTimeout)
	qctx, cancel := context.WithTimeout(ctx, cfg.QueryTimeout)
	defer cancel()
	return ReadServerWAL(qctx, conn.PgConn())
}

// parseHistory reads a timeline history file: a line per ancestor timeline,
// "<timeline>\t<switch point>\t<reason>", and comments starting with #.
func parseHistory(content []byte) (map[int32]pglogrepl.LSN, error) {
	ended := map[int32]pglogrepl.LSN{}
	sc := bufio.NewScanner(bytes.NewReader(content))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("history line %q: want <timeline> <switch point>", line)
		}
		tli, err := strconv.ParseInt(fields[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("history line %q: %w", line, err)
		}
		lsn, err := pglogrepl.ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("history line %q: %w", line, err)
		}
		ended[int32(tli)] = lsn
	}
	return ended, sc.Err()
}
