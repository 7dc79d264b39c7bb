package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
)

// cmdCleanup removes every jump to an NFQPOLICY- chain, those chains (IPv4
// and IPv6) and the NFQPOLICY- ipsets. Running it twice is fine. Flows the
// connmark-accept rule was carrying fall back to whatever the remaining
// rules say, so run it after the agent is gone for good (uninstall).
func cmdCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nfqpolicy cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backend := fs.String("iptables-backend", "auto", "iptables binaries the agent used: auto (both backends), legacy or nft")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	families := fs.String("ip-families", "auto", "IP families to clean: auto (IPv6 too unless the kernel has none), ipv4, ipv6 or ipv4,ipv6")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nfqpolicy cleanup: unexpected arguments %q\n", fs.Args())
		return 2
	}
	log, err := runLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "nfqpolicy cleanup: %v\n", err)
		return 2
	}
	log = log.With().Str("component", "cleanup").Logger()
	b, err := iptables.ParseBackend(*backend)
	fams, ferr := iptables.ParseFamilies(*families)
	if err := errors.Join(err, ferr); err != nil {
		log.Error().Err(err).Msg("bad flags")
		return 2
	}
	if err := errors.Join(dataplane.CheckNetAdmin(), iptables.CheckTools(b, fams...)); err != nil {
		log.Error().Err(err).Msg("cannot run on this host")
		return 2
	}
	t := iptables.New(iptables.Exec{}, b, fams...)
	if err := t.Cleanup(ctx); err != nil {
		log.Error().Err(err).Msg("cleanup incomplete")
		return 1
	}
	left, err := t.Leftovers(ctx)
	if err != nil {
		log.Error().Err(err).Msg("cannot verify cleanup")
		return 1
	}
	if len(left) > 0 {
		log.Error().Strs("left", left).Msg("cleanup incomplete")
		return 1
	}
	names := make([]string, len(fams))
	for i, f := range fams {
		names[i] = f.String()
	}
	log.Info().Strs("families", names).Msg("removed every NFQPOLICY chain, jump and set")
	return 0
}
