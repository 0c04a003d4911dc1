# bash completion for blockyard                                -*- shell-script -*-
#
# Install: copy to /usr/share/bash-completion/completions/blockyard, or
#   source completion/blockyard.bash
#
# Completes sub-commands, options, choices (kinds, write modes, controller
# types, formats), files where a FILE is expected, and -- when the registry
# can be asked quickly -- medium names and controller names.

_blockyard_state_args() {
    local i
    for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
        if [[ ${COMP_WORDS[i]} == --state-dir ]]; then
            printf -- '--state-dir\n%s\n' "${COMP_WORDS[i + 1]}"
            return
        fi
    done
}

_blockyard_media() {
    local -a state
    mapfile -t state < <(_blockyard_state_args)
    timeout 2 blockyard medium list --json "${state[@]}" 2>/dev/null |
        sed -n 's/^ *"name": "\(.*\)",\{0,1\}$/\1/p'
}

_blockyard_controllers() {
    local -a state
    mapfile -t state < <(_blockyard_state_args)
    timeout 2 blockyard controller list --json "${state[@]}" 2>/dev/null |
        sed -n 's/^    "name": "\(.*\)",\{0,1\}$/\1/p'
}

_blockyard() {
    local cur prev words cword
    _init_completion || return

    local kinds="hdd dvd floppy"
    local modes="normal writethrough shareable immutable multiattach readonly"
    local ctypes="ide sata scsi sas usb nvme virtio-scsi"
    local formats="raw vdi vhd vmdk parallels"

    case $prev in
        --state-dir) _filedir -d; return ;;
        --config | --move) _filedir; return ;;
        --kind) COMPREPLY=($(compgen -W "$kinds" -- "$cur")); return ;;
        --type | --mtype)
            if [[ ${words[1]} == controller ]]; then
                COMPREPLY=($(compgen -W "$ctypes" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "$modes" -- "$cur"))
            fi
            return ;;
        --format | -f) COMPREPLY=($(compgen -W "$formats iso" -- "$cur")); return ;;
        --variant) COMPREPLY=($(compgen -W "dynamic fixed split2g stream" -- "$cur")); return ;;
        --autoreset | --host-cache) COMPREPLY=($(compgen -W "on off" -- "$cur")); return ;;
        --log-level) COMPREPLY=($(compgen -W "debug info warning error" -- "$cur")); return ;;
        --medium) COMPREPLY=($(compgen -W "$(_blockyard_media)" -- "$cur")); return ;;
        --port | --size | --resize | --create | --name | --description | --nbd | --iscsi)
            return ;;
    esac

    local cmd=${words[1]} sub=${words[2]}
    if ((cword == 1)); then
        COMPREPLY=($(compgen -W "serve medium controller attach detach config iscsi --help \
            --version" -- "$cur"))
        return
    fi
    case $cmd in
        serve)
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "--nbd --iscsi --name --read-only --format \
                    --state-dir --config --log-level" -- "$cur"))
            else
                _filedir
            fi ;;
        medium)
            if ((cword == 2)); then
                COMPREPLY=($(compgen -W "add list info search modify remove release \
                    clear-inaccessible refresh clone create check compact resize" -- "$cur"))
                return
            fi
            case $sub in
                add)
                    if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "--kind --type --description --format \
                            --parent --create --variant --state-dir --json" -- "$cur"))
                    else _filedir; fi ;;
                list)
                    COMPREPLY=($(compgen -W "$kinds --tree --json --state-dir" -- "$cur")) ;;
                modify)
                    if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "--type --autoreset --description --resize \
                            --compact --move --bandwidth-group --state-dir --json" -- "$cur"))
                    else COMPREPLY=($(compgen -W "$(_blockyard_media)" -- "$cur")); fi ;;
                remove)
                    if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "--delete --state-dir --json" -- "$cur"))
                    else COMPREPLY=($(compgen -W "$(_blockyard_media)" -- "$cur")); fi ;;
                info | release)
                    if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "--state-dir --json" -- "$cur"))
                    else COMPREPLY=($(compgen -W "$(_blockyard_media)" -- "$cur")); fi ;;
                clone)
                    if [[ $cur == -* ]]; then
                        COMPREPLY=($(compgen -W "--format --variant --kind --type \
                            --no-register --state-dir --json" -- "$cur"))
                    elif ((cword == 3)); then
                        COMPREPLY=($(compgen -W "$(_blockyard_media)" -- "$cur"))
                    else _filedir; fi ;;
                search | clear-inaccessible | refresh)
                    COMPREPLY=($(compgen -W "--state-dir --json" -- "$cur")) ;;
                *) _filedir ;;
            esac ;;
        controller)
            if ((cword == 2)); then
                COMPREPLY=($(compgen -W "add list remove attachments" -- "$cur"))
            elif [[ $sub == remove && $cur != -* ]]; then
                COMPREPLY=($(compgen -W "$(_blockyard_controllers)" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "--type --host-cache --state-dir --json" -- "$cur"))
            fi ;;
        attach | detach)
            if ((cword == 2)); then
                COMPREPLY=($(compgen -W "$(_blockyard_controllers)" -- "$cur"))
            else
                COMPREPLY=($(compgen -W "--port --medium --mtype --name --state-dir \
                    --json" -- "$cur"))
            fi ;;
        config)
            if ((cword == 2)); then
                COMPREPLY=($(compgen -W "check" -- "$cur"))
            else
                _filedir toml
            fi ;;
    esac
} &&
    complete -F _blockyard blockyard
