package stream

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// The servers of a two-process run live in a child process that speaks a
// line protocol on its standard input and output: it prints
// "serve <name> <addr>" for each server, then answers each "usage" line
// with "usage <cpu ns> <mallocs> <bytes>" (its SelfUsage), and stops its
// servers and returns when its input ends.

// ServeChild is the child's side: it serves the named targets until in
// ends.
func ServeChild(in io.Reader, out io.Writer, names []string) error {
	for _, name := range names {
		addr, stop, err := Serve(name)
		if err != nil {
			return err
		}
		defer stop()
		fmt.Fprintf(out, "serve %s %s\n", name, addr)
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() != "usage" {
			return fmt.Errorf("stream server: unknown request %q", sc.Text())
		}
		u := SelfUsage()
		fmt.Fprintf(out, "usage %d %d %d\n", u.CPU.Nanoseconds(), u.Mallocs, u.Bytes)
	}
	return sc.Err()
}

// SpawnServers starts cmd, a process running ServeChild for names, and
// dials each of its servers. The Targets report the child's usage; stop
// closes them and ends the child.
func SpawnServers(ctx context.Context, cmd *exec.Cmd, names []string) (ts []*Target, stop func(), err error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	out := bufio.NewScanner(outPipe)
	stop = func() {
		for _, t := range ts {
			t.Close()
		}
		_ = in.Close()
		_ = cmd.Wait()
	}
	var mu sync.Mutex // one usage request at a time
	usage := func() (Usage, error) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := io.WriteString(in, "usage\n"); err != nil {
			return Usage{}, err
		}
		if !out.Scan() {
			return Usage{}, fmt.Errorf("stream server exited: %v", out.Err())
		}
		var cpu int64
		var u Usage
		if _, err := fmt.Sscanf(out.Text(), "usage %d %d %d", &cpu, &u.Mallocs, &u.Bytes); err != nil {
			return Usage{}, fmt.Errorf("stream server: %q: %v", out.Text(), err)
		}
		u.CPU = time.Duration(cpu)
		return u, nil
	}
	for range names {
		if !out.Scan() {
			stop()
			return nil, nil, fmt.Errorf("stream server exited before serving: %v", out.Err())
		}
		f := strings.Fields(out.Text())
		if len(f) != 3 || f[0] != "serve" {
			stop()
			return nil, nil, fmt.Errorf("stream server: unexpected %q", out.Text())
		}
		t, err := Dial(ctx, f[1], f[2])
		if err != nil {
			stop()
			return nil, nil, err
		}
		t.Server = usage
		ts = append(ts, t)
	}
	return ts, stop, nil
}
