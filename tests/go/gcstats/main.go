// Command gcstats is the Go half of tests/test_go_gc_compare.py.
//
//	gcstats ROUNDS SEED   run the workload and print, as JSON, how
//	                      runtime.MemStats changed over it
//
// The workload builds trees and lists of pointer-holding nodes, keeps them
// in global arrays and drops them when a later structure takes their slot;
// every choice comes from a 64-bit LCG that the Python half reproduces, so
// both sides allocate the same objects in the same order.  Run it with
// GOGC=100 and GOMAXPROCS=1.  Before the workload and after it the program
// collects (runtime.GC, which also finishes sweeping), so the figures after
// are the live heap the workload left.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

type tnode struct { // 24 bytes: a binary tree node
	left, right *tnode
	val         int64
}

type wnode struct { // 48 bytes: a wider tree node
	left, right *wnode
	val         [4]int64
}

type lnode struct { // 32 bytes: a list node with a pointer-free payload
	next *lnode
	data []byte
}

var (
	trees [64]*tnode
	wides [64]*wnode
	lists [64]*lnode
	bigs  [8][]*lnode
	state uint64
)

// rnd returns the next LCG draw in [0, n).
func rnd(n uint64) uint64 {
	state = state*6364136223846793005 + 1442695040888963407
	return (state >> 33) % n
}

func tree(d int64) *tnode {
	n := &tnode{val: d}
	if d > 0 {
		n.left = tree(d - 1)
		n.right = tree(d - 1)
	}
	return n
}

func wide(d int64) *wnode {
	n := &wnode{}
	n.val[0] = d
	if d > 0 {
		n.left = wide(d - 1)
		n.right = wide(d - 1)
	}
	return n
}

// node: the payload first, then the node that holds it.
func node(next *lnode) *lnode {
	data := make([]byte, 16+rnd(480))
	n := &lnode{next: next}
	n.data = data
	return n
}

func list(length uint64) *lnode {
	var head *lnode
	for i := uint64(0); i < length; i++ {
		head = node(head)
	}
	return head
}

func big() []*lnode {
	b := make([]*lnode, 6000) // 48000 bytes: a large object with pointers
	for k := rnd(40); k > 0; k-- {
		at := rnd(6000)
		b[at] = node(nil)
	}
	return b
}

func workload(rounds int) {
	for r := 0; r < rounds; r++ {
		c := rnd(20)
		switch {
		case c < 8:
			slot := rnd(64)
			trees[slot] = tree(int64(3 + rnd(6)))
		case c < 12:
			slot := rnd(64)
			wides[slot] = wide(int64(2 + rnd(6)))
		case c < 19:
			slot := rnd(64)
			lists[slot] = list(10 + rnd(200))
		default:
			slot := rnd(8)
			bigs[slot] = big()
		}
	}
}

type result struct {
	NumGC       uint32   `json:"num_gc"`
	NumForcedGC uint32   `json:"num_forced_gc"`
	HeapAlloc   int64    `json:"heap_alloc"`
	HeapObjects int64    `json:"heap_objects"`
	Mallocs     uint64   `json:"mallocs"`
	Live        []int64  `json:"live"` // per BySize entry: (mallocs - frees) after - before
	Sizes       []uint32 `json:"sizes"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gcstats ROUNDS SEED")
		os.Exit(2)
	}
	rounds, err1 := strconv.Atoi(os.Args[1])
	seed, err2 := strconv.ParseUint(os.Args[2], 10, 64)
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "gcstats: ROUNDS and SEED must be integers")
		os.Exit(2)
	}
	state = seed
	// The runtime's own timer heap grows (a heap object) the first time the
	// background scavenger sleeps, which happens after a few cycles: give it
	// room now, so that the workload's figures hold only the workload.
	for i := 0; i < 8; i++ {
		time.NewTimer(time.Hour).Stop()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	workload(rounds)
	runtime.GC()
	runtime.ReadMemStats(&after)
	res := result{
		NumGC:       after.NumGC - before.NumGC,
		NumForcedGC: after.NumForcedGC - before.NumForcedGC,
		HeapAlloc:   int64(after.HeapAlloc) - int64(before.HeapAlloc),
		HeapObjects: int64(after.HeapObjects) - int64(before.HeapObjects),
		Mallocs:     after.Mallocs - before.Mallocs,
	}
	for i := range after.BySize {
		a, b := after.BySize[i], before.BySize[i]
		res.Live = append(res.Live, int64(a.Mallocs-a.Frees)-int64(b.Mallocs-b.Frees))
		res.Sizes = append(res.Sizes, a.Size)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
