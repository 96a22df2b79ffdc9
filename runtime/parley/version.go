package parley

// Version is the runtime's semantic version.
const Version = "0.1.0"

// These constants let generated code assert at compile time that the
// runtime it is built against is new enough: a file generated for runtime
// v0.1.0 refers to IsAtLeastVersion0_1_0 and fails to build against an
// older runtime. They are never removed.
const (
	// IsAtLeastVersion0_1_0 is referred to by code generated for v0.1.0.
	IsAtLeastVersion0_1_0 = true
)
