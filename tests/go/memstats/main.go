// Command memstats is the Go half of tests/test_go_compare.py.
//
//	memstats alloc SEQFILE   allocate the objects listed in SEQFILE with the
//	                         garbage collector off and print, as JSON, how
//	                         runtime.MemStats changed
//	memstats roundup MAX     print, as JSON, the size the runtime gives an
//	                         allocation of n bytes, for n = 1 .. MAX
//
// SEQFILE holds one object per line: "SIZE KIND", KIND being "noscan" (a
// []byte, pointer-free) or "scan" (a []*byte, SIZE a multiple of 8).
//
// Run it with GOMAXPROCS=1 so every allocation goes through one mcache.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// delta is what alloc prints: MemStats after minus MemStats before.
type delta struct {
	NumBySize int      `json:"num_by_size"` // len(MemStats.BySize)
	BySize    []uint64 `json:"by_size"`     // Mallocs per BySize entry
	BySizeSz  []uint32 `json:"by_size_size"`
	Mallocs   uint64   `json:"mallocs"`
	Frees     uint64   `json:"frees"`
	HeapInuse int64    `json:"heap_inuse"`
	HeapAlloc int64    `json:"heap_alloc"`
	NumGC     uint32   `json:"num_gc"`
	// Bytes of free slots in Go's in-use spans before the loop (HeapInuse -
	// HeapAlloc): room left by the runtime's start-up that Go fills first.
	RoomBefore int64 `json:"room_before"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "memstats: "+format+"\n", args...)
	os.Exit(2)
}

// readSeq parses SEQFILE into sizes and scan flags.
func readSeq(path string) ([]int, []bool) {
	f, err := os.Open(path)
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	var sizes []int
	var scan []bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			fail("bad line %q", sc.Text())
		}
		n, err := strconv.Atoi(fields[0])
		if err != nil || n <= 0 {
			fail("bad size in %q", sc.Text())
		}
		switch fields[1] {
		case "noscan":
			scan = append(scan, false)
		case "scan":
			if n%8 != 0 {
				fail("scan size %d is not a multiple of 8", n)
			}
			scan = append(scan, true)
		default:
			fail("bad kind in %q", sc.Text())
		}
		sizes = append(sizes, n)
	}
	if err := sc.Err(); err != nil {
		fail("%v", err)
	}
	return sizes, scan
}

func alloc(path string) {
	debug.SetGCPercent(-1)
	sizes, scan := readSeq(path)

	// Everything the loop needs is allocated here, before the first
	// ReadMemStats: the loop itself must allocate only the listed objects.
	nScan := 0
	for _, s := range scan {
		if s {
			nScan++
		}
	}
	keepBytes := make([][]byte, 0, len(sizes)-nScan)
	keepPtrs := make([][]*byte, 0, nScan)
	before := new(runtime.MemStats)
	after := new(runtime.MemStats)

	// A collection flushes every mcache (tiny block included) and finishes
	// sweeping; ReadMemStats flushes the mcaches again, so the loop starts
	// with an empty mcache, as a fresh realalloc heap does.
	runtime.GC()
	runtime.ReadMemStats(before)
	for i, n := range sizes {
		if scan[i] {
			keepPtrs = append(keepPtrs, make([]*byte, n/8))
		} else {
			keepBytes = append(keepBytes, make([]byte, n))
		}
	}
	runtime.ReadMemStats(after)
	runtime.KeepAlive(keepBytes)
	runtime.KeepAlive(keepPtrs)

	d := delta{
		NumBySize:  len(after.BySize),
		Mallocs:    after.Mallocs - before.Mallocs,
		Frees:      after.Frees - before.Frees,
		HeapInuse:  int64(after.HeapInuse) - int64(before.HeapInuse),
		HeapAlloc:  int64(after.HeapAlloc) - int64(before.HeapAlloc),
		NumGC:      after.NumGC - before.NumGC,
		RoomBefore: int64(before.HeapInuse) - int64(before.HeapAlloc),
	}
	for i := range after.BySize {
		d.BySize = append(d.BySize, after.BySize[i].Mallocs-before.BySize[i].Mallocs)
		d.BySizeSz = append(d.BySizeSz, after.BySize[i].Size)
	}
	out, err := json.Marshal(d)
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(string(out))
}

// roundup prints cap(append([]byte(nil), make([]byte, n)...)) for n = 1 .. max.
// Appending n bytes to a nil slice makes growslice allocate exactly
// roundupsize(n) bytes (the new capacity is n, as n > 2*0) and report all of
// them as capacity: the runtime's roundupsize, observed from outside.
func roundup(max int) {
	caps := make([]int, max)
	for n := 1; n <= max; n++ {
		caps[n-1] = cap(append([]byte(nil), make([]byte, n)...))
	}
	out, err := json.Marshal(caps)
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: memstats alloc SEQFILE | memstats roundup MAX")
	}
	switch os.Args[1] {
	case "alloc":
		alloc(os.Args[2])
	case "roundup":
		max, err := strconv.Atoi(os.Args[2])
		if err != nil || max < 1 {
			fail("bad MAX %q", os.Args[2])
		}
		roundup(max)
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
