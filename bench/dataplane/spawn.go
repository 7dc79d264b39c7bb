package main

import (
	"os/exec"
	"runtime"
	"syscall"
)

// spawner starts child processes from one OS thread that lives as long
// as the harness. The children get SIGKILL when the thread that forked
// them ends (Pdeathsig), so that a killed harness leaves no agent behind;
// but the load generators lock threads into namespaces and the Go runtime
// destroys such threads when they finish, which would take any child
// forked from them along. A thread of its own avoids that.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		// Locked for good: no other goroutine ever runs on this thread.
		runtime.LockOSThread()
		for {
			select {
			case r := <-s.reqs:
				r.err <- r.cmd.Start()
			case <-s.done:
				return
			}
		}
	}()
	return s
}

// start starts cmd with Pdeathsig set, from the spawner's thread.
func (s *spawner) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	s.reqs <- r
	return <-r.err
}

// close ends the spawner's thread, and with it (Pdeathsig) any child
// still running: call it after the children were stopped.
func (s *spawner) close() { close(s.done) }
