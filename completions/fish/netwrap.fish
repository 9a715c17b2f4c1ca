# fish completion for netwrap(1); installed as share/fish/vendor_completions.d/netwrap.fish.

# The names --backend takes, from netwrap's own registry (plugins included).
function __netwrap_backends
    netwrap backends --names 2>/dev/null
end

# Where the command starts in the words typed so far: after "--", or at the
# first word that is neither an option nor an option's value. Prints nothing
# while the command has not started.
function __netwrap_command_start
    set -l tokens (commandline -opc)
    set -l skip 0
    for i in (seq 2 (count $tokens))
        set -l token $tokens[$i]
        if test $skip -eq 1
            set skip 0
            continue
        end
        switch $token
            case --
                echo (math $i + 1)
                return
            case --backend --dns -d --hosts-file --add-host --user --allow --deny --default-policy --flow-log --capture -c --capture-point -C --tunrelay-tcp --helper-path -i --iface --publish
                set skip 1
            case '-*'
            case '*'
                echo $i
                return
        end
    end
end

function __netwrap_before_command
    test -z (__netwrap_command_start)
end

# The command's own completions, for the words from its start on.
function __netwrap_complete_command
    set -l start (__netwrap_command_start)
    set -l tokens (commandline -opc)
    set -l words
    if test $start -le (count $tokens)
        set words (string escape -- $tokens[$start..-1])
    end
    complete -C (string join ' ' -- $words (commandline -ct))
end

complete -c netwrap -n __netwrap_before_command -f -a 'backends' -d 'list backends: available or not, version, capabilities'
complete -c netwrap -n __netwrap_before_command -f -a 'doctor' -d 'check this machine'
complete -c netwrap -n __netwrap_before_command -s h -l help -d 'show the options'
complete -c netwrap -n __netwrap_before_command -l version -d 'show the version'
complete -c netwrap -n __netwrap_before_command -l backend -x -a '(__netwrap_backends)' -d 'backend to use'
complete -c netwrap -n __netwrap_before_command -l allow-host-loopback -d 'let the sandbox reach the host loopback'
complete -c netwrap -n __netwrap_before_command -s d -l dns -x -d 'use this resolver (repeatable)'
complete -c netwrap -n __netwrap_before_command -l hosts-file -r -F -d "the sandbox's /etc/hosts"
complete -c netwrap -n __netwrap_before_command -l add-host -x -d 'add a hosts entry NAME:IP'
complete -c netwrap -n __netwrap_before_command -l as-root -d 'run the command as root of the sandbox (not tamper-proof)'
complete -c netwrap -n __netwrap_before_command -l user -x -a '(__fish_complete_users)' -d 'as root: run the command as this user'
complete -c netwrap -n __netwrap_before_command -l offline -d "nothing but the sandbox's loopback"
complete -c netwrap -n __netwrap_before_command -l block-private -d 'refuse private ranges and the host'
complete -c netwrap -n __netwrap_before_command -l block-metadata -d 'refuse cloud metadata endpoints'
complete -c netwrap -n __netwrap_before_command -l allow -x -d 'allow matching flows'
complete -c netwrap -n __netwrap_before_command -l deny -x -d 'refuse matching flows'
complete -c netwrap -n __netwrap_before_command -l default-policy -x -a 'allow deny' -d 'for flows no rule matches'
complete -c netwrap -n __netwrap_before_command -l flow-log -r -F -d 'write one JSON line per flow'
complete -c netwrap -n __netwrap_before_command -s c -l capture -r -F -d "write the command's packets (pcapng)"
complete -c netwrap -n __netwrap_before_command -s C -l capture-point -x -a 'child egress wire-egress both' -d 'what -c captures'
complete -c netwrap -n __netwrap_before_command -l tunrelay-tcp -x -a 'auto tproxy nat' -d 'how tunrelay relays TCP'
complete -c netwrap -n __netwrap_before_command -l summary -d 'print a short report after the command'
complete -c netwrap -n __netwrap_before_command -l helper-path -x -a '(__fish_complete_directories)' -d 'look up helper programs here only'
complete -c netwrap -n __netwrap_before_command -s i -l iface -x -a '(__fish_print_interfaces)' -d 'leave the host through this interface'
complete -c netwrap -n __netwrap_before_command -l dns-allowed-only -d 'answer DNS only for names an --allow names'
complete -c netwrap -n __netwrap_before_command -l publish -x -d 'publish a sandbox port on the host'
complete -c netwrap -n __netwrap_before_command -l doctor -d 'check this machine'
complete -c netwrap -n __netwrap_before_command -s v -l verbose -d 'say more'
complete -c netwrap -n __netwrap_before_command -s q -l quiet -d 'only errors'
complete -c netwrap -n '__fish_seen_subcommand_from backends' -l names -d 'only the names --backend takes'
# After the options: the command to run, with its own completions.
complete -c netwrap -n __netwrap_before_command -a '(__fish_complete_command)'
complete -c netwrap -n 'not __netwrap_before_command' -x -a '(__netwrap_complete_command)'
