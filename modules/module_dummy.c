/*
 * module_dummy.c - the smallest milter-agent C module: every message continues.
 *
 * [Filter]
 * task_name = dummy
 * module_name = "/usr/local/libexec/milter-agent/module_dummy.so"
 * exec_cmd = "%f"
 *
 * It checks that it was given a readable message file; without one it returns 75, which a
 * filter may list in tempfail_exit_codes.
 */
#include <stdio.h>

#include "milter_agent_module.h"

int process_message_by_module(int argc, char **argv)
{
    FILE *message;

    if (argc < 2)
        return 0;
    message = fopen(argv[1], "rb");
    if (message == NULL)
        return 75;
    fclose(message);
    return 0;
}
