//go:build linux

package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Every flag of `herd serve` can also come from the environment and from a
// TOML file; the command line wins over the environment, which wins over
// the file:
//
//	--workers 4          HERD_WORKERS=4          workers = 4
//	--listen A --listen B HERD_LISTEN=A,B         listen = ["A", "B"]
//	--drain-timeout 10s  HERD_DRAIN_TIMEOUT=10s  drain-timeout = "10s"
//
// A key the file does not know is an error, as is a value its flag would
// refuse; the first such mistake is reported before anything starts.

// envName is the environment variable for a flag.
func envName(flag string) string {
	return "HERD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyDefaults fills the flags the command line did not set, from the
// environment and then from the config file at path ("" for none).
func applyDefaults(fs *flag.FlagSet, path string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if err != nil || set[f.Name] || !ok || f.Name == "config" {
			return
		}
		for _, part := range splitList(f.Name, v) {
			if e := fs.Set(f.Name, part); e != nil {
				err = fmt.Errorf("%s=%q: invalid value (herd serve -h lists each flag's type)", envName(f.Name), v)
				return
			}
		}
		set[f.Name] = true
	})
	if err != nil || path == "" {
		return err
	}
	var doc map[string]any
	if _, err := toml.DecodeFile(path, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == "config" || k == "check" {
			return fmt.Errorf("config %s: unknown key %q", path, k)
		}
		if set[k] {
			continue
		}
		values, ok := doc[k].([]any)
		if !ok {
			values = []any{doc[k]}
		}
		for _, v := range values {
			if _, isTable := v.(map[string]any); isTable {
				return fmt.Errorf("config %s: key %q: want a value, not a table", path, k)
			}
			if e := fs.Set(k, fmt.Sprint(v)); e != nil {
				return fmt.Errorf("config %s: key %q: invalid value %q (herd serve -h lists each key's type)", path, k, fmt.Sprint(v))
			}
		}
	}
	return nil
}

// splitList splits a repeatable flag's environment value on commas.
func splitList(name, v string) []string {
	if name == "listen" {
		return strings.Split(v, ",")
	}
	return []string{v}
}
