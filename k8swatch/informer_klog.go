package k8swatch

import (
	"fmt"

	"github.com/go-logr/logr"
	"github.com/rs/zerolog"
)

// KlogLogger adapts a zerolog logger to logr, so that what client-go logs
// through klog comes out as the agent's JSON lines. Install it once in main
// (klog's logger is process-wide): klog.SetLogger(k8swatch.KlogLogger(log)).
// klog verbosity V(1) and above maps to zerolog's debug level, V(0) to info.
func KlogLogger(log zerolog.Logger) logr.Logger {
	return logr.New(zerologSink{log: log.With().Str("component", "client-go").Logger()})
}

type zerologSink struct {
	log  zerolog.Logger
	name string
}

func (s zerologSink) Init(logr.RuntimeInfo) {}

func (s zerologSink) Enabled(level int) bool {
	if level > 0 {
		return s.log.GetLevel() <= zerolog.DebugLevel
	}
	return s.log.GetLevel() <= zerolog.InfoLevel
}

func (s zerologSink) Info(level int, msg string, kv ...any) {
	ev := s.log.Info()
	if level > 0 {
		ev = s.log.Debug()
	}
	s.send(ev, msg, kv)
}

func (s zerologSink) Error(err error, msg string, kv ...any) {
	s.send(s.log.Error().Err(err), msg, kv)
}

func (s zerologSink) send(ev *zerolog.Event, msg string, kv []any) {
	if ev == nil {
		return
	}
	if s.name != "" {
		ev = ev.Str("logger", s.name)
	}
	addPairs(ev, kv)
	ev.Msg(msg)
}

func (s zerologSink) WithValues(kv ...any) logr.LogSink {
	ctx := s.log.With()
	for i := 0; i < len(kv); i += 2 {
		key, val := pair(kv, i)
		ctx = ctx.Interface(key, val)
	}
	s.log = ctx.Logger()
	return s
}

func (s zerologSink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "/" + name
	}
	s.name = name
	return s
}

func addPairs(ev *zerolog.Event, kv []any) {
	for i := 0; i < len(kv); i += 2 {
		key, val := pair(kv, i)
		if err, ok := val.(error); ok {
			ev.AnErr(key, err)
			continue
		}
		ev.Interface(key, val)
	}
}

// pair reads the i-th key and value, tolerating the malformed lists logr
// allows (a non-string key, a missing value) instead of panicking.
func pair(kv []any, i int) (string, any) {
	key, ok := kv[i].(string)
	if !ok {
		key = fmt.Sprint(kv[i])
	}
	if i+1 >= len(kv) {
		return key, "(MISSING)"
	}
	return key, kv[i+1]
}
