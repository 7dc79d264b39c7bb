package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/capture"
	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/debugapi"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/metrics"
)

// observeFlags are the agent's flow log, capture and debug API flags.
type observeFlags struct {
	flowLog, flowLogSelect string
	flowLogRate            float64
	flowLogBurst           int
	flowLogMaxBytes        int64
	flowLogKeep            int
	flowLogLabels          bool

	capture, captureSelect, captureFilter string
	captureSegments                       int
	captureSegmentBytes                   int64

	debugSocket string
	pprof       bool
}

func (o *observeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.flowLog, "flow-log", "", `write one JSON line per decided flow to this file ("-": stdout; empty: off)`)
	fs.StringVar(&o.flowLogSelect, "flow-log-select", "denied", "flows to log: denied (including would-deny), all, or audit-diff")
	fs.Float64Var(&o.flowLogRate, "flow-log-rate", 100, "flow log records per second per source address (0: unlimited)")
	fs.IntVar(&o.flowLogBurst, "flow-log-burst", 200, "flow log records a source may burst above --flow-log-rate")
	fs.Int64Var(&o.flowLogMaxBytes, "flow-log-max-bytes", 100<<20, "rotate the flow log file at this size (0: never)")
	fs.IntVar(&o.flowLogKeep, "flow-log-keep", 5, "rotated flow log files kept (FILE.1 ... FILE.N)")
	fs.BoolVar(&o.flowLogLabels, "flow-log-labels", false, "add both pods' labels to each flow log record")
	fs.StringVar(&o.capture, "capture", "", "record decided packets in a pcapng ring FILE, FILE.1, ... (empty: off)")
	fs.StringVar(&o.captureSelect, "capture-select", "denied", "packets to capture: denied, would-deny or all")
	fs.StringVar(&o.captureFilter, "capture-filter", "", `only flows matching, e.g. "host 10.0.0.1 and port 80 and proto tcp"`)
	fs.IntVar(&o.captureSegments, "capture-segments", 4, "files in the capture ring")
	fs.Int64Var(&o.captureSegmentBytes, "capture-segment-bytes", 16<<20, "size of one capture file")
	fs.StringVar(&o.debugSocket, "debug-socket", debugapi.DefaultSocket, "serve the debug API (flows, policies, explain, trace) on this unix socket (empty: off)")
	fs.BoolVar(&o.pprof, "pprof", false, "serve /debug/pprof/ on the health address")
}

// observers is what start built: the verdict observers, the metrics
// options that read their totals, and what to close after the readers
// have stopped.
type observers struct {
	// run names this run of the agent in every flow-log record and in the
	// capture's section header, so a restart is told from a gap.
	run     string
	list    dataplane.Observers
	hub     *debugapi.Hub
	flowLog *flowlog.Logger
	capture *capture.Capture
	closers []io.Closer
}

func (o *observeFlags) start(node, mode string) (*observers, error) {
	obs := &observers{run: flowlog.NewRunID()}
	if o.flowLog != "" {
		sel, err := flowlog.ParseSelect(o.flowLogSelect)
		if err != nil {
			return nil, err
		}
		var prev *flowlog.Entry
		state := ""
		if o.flowLog != "-" {
			prev = flowlog.LastEntry(o.flowLog)
			state = flowlog.StatePath(o.flowLog)
		}
		sink, err := flowlog.OpenSink(o.flowLog, o.flowLogMaxBytes, o.flowLogKeep)
		if err != nil {
			return nil, err
		}
		l, err := flowlog.New(flowlog.Options{Out: sink, Select: sel, RatePerSec: o.flowLogRate, Burst: o.flowLogBurst,
			Renderer: flowlog.Renderer{Node: node, Run: obs.run, Mode: flowMode(mode), Labels: o.flowLogLabels}, Previous: prev, StatePath: state})
		if err != nil {
			sink.Close()
			return nil, err
		}
		obs.flowLog = l
		obs.list = append(obs.list, l)
		obs.closers = append(obs.closers, l, sink) // the log first: it writes to the sink
	}
	if o.capture != "" {
		sel, err := capture.ParseSelect(o.captureSelect)
		if err != nil {
			obs.Close()
			return nil, err
		}
		c, err := capture.New(capture.Options{Path: o.capture, Select: sel, Filter: o.captureFilter,
			Segments: o.captureSegments, SegmentBytes: o.captureSegmentBytes, RunID: obs.run})
		if err != nil {
			obs.Close()
			return nil, err
		}
		obs.capture = c
		obs.list = append(obs.list, c)
		obs.closers = append(obs.closers, c)
	}
	obs.hub = debugapi.NewHub(1024)
	obs.list = append(obs.list, obs.hub)
	return obs, nil
}

// metricsOptions adds the flow log's and capture's totals to mo.
func (obs *observers) metricsOptions(mo *metrics.Options) {
	if l := obs.flowLog; l != nil {
		mo.FlowLog = func() metrics.Totals {
			s := l.Stats()
			return metrics.Totals{Written: s.Written, Lost: s.Lost, RateLimited: s.RateLimited}
		}
	}
	if c := obs.capture; c != nil {
		mo.Capture = func() metrics.Totals {
			s := c.Stats()
			return metrics.Totals{Written: s.Written, Lost: s.Lost}
		}
	}
}

// debugServer builds the debug API; serve it with serveDebug once the
// agent exists (state and explain read it).
func (o *observeFlags) debugServer(obs *observers, node, mode string, state debugapi.StateFunc, explain debugapi.ExplainFunc) (*debugapi.Server, http.Handler, error) {
	srv, err := debugapi.New(debugapi.Options{Hub: obs.hub, State: state, Explain: explain, Renderer: flowlog.Renderer{Node: node, Run: obs.run, Mode: flowMode(mode), Labels: true}})
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	srv.Register(mux, "/debug")
	return srv, mux, nil
}

// serveDebug serves the debug API on the unix socket until ctx is done.
func (o *observeFlags) serveDebug(ctx context.Context, srv *debugapi.Server, log zerolog.Logger) {
	if o.debugSocket == "" {
		return
	}
	go func() {
		if err := debugapi.ServeUnix(ctx, o.debugSocket, srv.Handler()); err != nil {
			log.Error().Err(err).Str("socket", o.debugSocket).Msg("debug API stopped")
		}
	}()
}

// Close flushes and closes the flow log and capture. Call it after the
// readers have stopped.
func (obs *observers) Close() error {
	var errs []error
	for _, c := range obs.closers {
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	obs.closers = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("flow log / capture: %w", err)
	}
	return nil
}

// liveState and liveExplain read the agent's current state.
func liveState(engine func() *filter.Engine) debugapi.StateFunc {
	return func() *filter.Ruleset {
		if e := engine(); e != nil {
			return e.Ruleset()
		}
		return nil
	}
}

// flowMode maps --mode, already validated, to the flow log's mode.
func flowMode(mode string) flowlog.Mode {
	m, err := flowlog.ParseMode(mode)
	if err != nil {
		return flowlog.Enforce
	}
	return m
}
