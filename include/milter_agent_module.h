/*
 * milter_agent_module.h - the C interface of milter-agent filter modules.
 *
 * A module is a shared library that exports one function:
 *
 *     int process_message_by_module(int argc, char **argv);
 *
 * argv[0] is the path of the library (the filter's module_name), argv[1] .. argv[argc - 1] are
 * the words of the filter's exec_cmd with their variables expanded (%f is the message file,
 * %r %n %h are files for the reply text, a new body and headers, exactly as for a program),
 * and argv[argc] is NULL. The strings belong to milter-agent and are valid only during the
 * call. The return value means what a program's exit code means: it is looked up in the
 * filter's reject_exit_codes, tempfail_exit_codes, accept_exit_codes and discard_exit_codes;
 * 0 and any other value continue with the next filter.
 *
 * Without module_safe_use the function runs in a thread of the daemon, possibly in several
 * threads at once (use run_single_instance = 1 otherwise): it must be thread-safe, must not
 * call exit(), and must not crash - a crash takes the daemon down. With module_safe_use = yes
 * it runs in a worker process, one message at a time, and a crash costs only that message.
 *
 * The library is loaded (dlopen) at the filter's first message and closed (dlclose) when a
 * reload drops the filter or finds the file changed. Use __attribute__((constructor)) and
 * __attribute__((destructor)) for set-up and clean-up. Install a new version by writing a new
 * file and renaming it over the old one (install(1) does), never by rewriting it in place.
 *
 * Build: cc -shared -fPIC -O2 -Wall -I/path/to/include -o module.so module.c
 */
#ifndef MILTER_AGENT_MODULE_H
#define MILTER_AGENT_MODULE_H

#define MILTER_AGENT_MODULE_ABI 1

#if defined(__GNUC__)
#define MILTER_AGENT_EXPORT __attribute__((visibility("default")))
#else
#define MILTER_AGENT_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

MILTER_AGENT_EXPORT int process_message_by_module(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* MILTER_AGENT_MODULE_H */
