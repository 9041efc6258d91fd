<#
    keyfleet's remote helpers on real Windows PowerShell 5.1, against stub SecureStorageBackup.exe tools.
    Pester 3.4 syntax (the version Windows PowerShell 5.1 ships). Needs an elevated session (HKLM keys, the
    PowerShell event log) on a machine without Service Manager:
        Import-Module Pester -RequiredVersion 3.4.0; Invoke-Pester tests/windows
#>

. (Join-Path $PSScriptRoot 'HelperHarness.ps1')

function Assert-HelperOk($Run) {
    # one failure message with what the helper said, instead of "expected True"
    if ($Run.ResultLines -ne 1 -or -not $Run.Result.ok) {
        $said = 'no result line'
        if ($Run.ResultLines -eq 1) { $said = '{0}: {1}' -f $Run.Result.error.kind, $Run.Result.error.message }
        throw ('the helper failed (exit {0}, {1}); stderr: {2}' -f $Run.ExitCode, $said, $Run.Stderr)
    }
    $Run.ExitCode | Should Be 0
}

function Assert-HelperFailed($Run, [string] $Kind) {
    $Run.ResultLines | Should Be 1
    $Run.Result.ok | Should Be $false
    $Run.Result.error.kind | Should BeExactly $Kind
    $Run.ExitCode | Should Not Be 0
}

function Get-ExportParams([string] $ToolPath, [string] $ToolInput, [double] $Timeout = 60) {
    return @{ tool_path = $ToolPath; tool_timeout = $Timeout; tool_input = $ToolInput }
}

function Get-RestoreParams([string] $ToolPath, [string] $ToolInput, [byte[]] $File) {
    return @{
        file                   = [Convert]::ToBase64String($File)
        sha256                 = Get-Sha256Hex $File
        tool_path              = $ToolPath
        tool_timeout           = 60
        tool_input             = $ToolInput
        expected_computer_name = $env:COMPUTERNAME
        expected_role          = 'management_server'
    }
}

function Get-ExportedFile($Run) {
    $file = [Convert]::FromBase64String($Run.Result.result.file)
    (Get-Sha256Hex $file) | Should BeExactly $Run.Result.result.sha256
    return ,$file
}

function Assert-ExactPassword([byte[]] $File, [Security.SecureString] $Password) {
    # the stub wrote the SHA-256 of what it read: equal only if the exact bytes of the password reached it
    [Text.Encoding]::ASCII.GetString($File) | Should BeExactly ([Text.Encoding]::ASCII.GetString((Get-StubKeyContent $Password)))
}

function Wait-NoStubProcess([string] $ToolPath) {
    # taskkill /F returns once the kill is requested; give Windows a moment to reap the tree
    $deadline = [DateTime]::UtcNow.AddSeconds(10)
    while (@(Get-StubProcess $ToolPath).Count -gt 0 -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 200 }
    return @(Get-StubProcess $ToolPath).Count
}

Describe 'keyfleet helpers on Windows PowerShell 5.1' {
    BeforeAll {
        $root = Join-Path ([IO.Path]::GetTempPath()) ('keyfleet-pester-' + [guid]::NewGuid().ToString('N'))
        $tools = @{}
        foreach ($name in 'readline', 'readkey', 'failing', 'hanging') {
            $tools[$name] = New-StubTool $name (Join-Path $root $name)
        }
        Set-ScsmRegistry $root
        $password = New-TestPassword
    }

    AfterAll {
        Remove-ScsmRegistry
        foreach ($tool in $tools.Values) {
            foreach ($leftover in @(Get-StubProcess $tool)) { Stop-Process -Id $leftover.ProcessId -Force -ErrorAction SilentlyContinue }
        }
        Remove-Item -LiteralPath $root -Recurse -Force -ErrorAction SilentlyContinue
    }

    Context 'a tool that reads the password with Console.ReadLine' {
        It 'exports and restores over stdin, the tool reading the password byte for byte' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readline 'stdin') -Password $password
            Assert-HelperOk $export
            $file = Get-ExportedFile $export
            Assert-ExactPassword $file $password
            $export.Result.result.tool_output | Should Match 'input: redirected'

            $restore = Invoke-Helper -Helper restore -Params (Get-RestoreParams $tools.readline 'stdin' $file) -Password $password
            Assert-HelperOk $restore
            $restore.Result.result.tool_output | Should Match 'Secure Storage Restore Complete'
        }

        It 'fails a restore with another password as tool-failed' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readline 'stdin') -Password $password
            Assert-HelperOk $export
            $file = Get-ExportedFile $export
            $other = New-TestPassword
            $restore = Invoke-Helper -Helper restore -Params (Get-RestoreParams $tools.readline 'stdin' $file) -Password $other
            Assert-HelperFailed $restore 'tool-failed'
            $restore.Result.error.message | Should Match 'not the one this backup file was made with'
        }

        It 'exports and restores on a pseudo console, masking the echoed password' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readline 'console') -Password $password
            Assert-HelperOk $export
            Assert-ExactPassword (Get-ExportedFile $export) $password
            $output = [string]$export.Result.result.tool_output
            $output | Should Match 'input: console'
            # Console.ReadLine echoes what is typed: the helper must have masked it
            $output | Should Match '\*{8}'
            (Test-PasswordIn $output $password) | Should Be $false

            $restore = Invoke-Helper -Helper restore -Params (Get-RestoreParams $tools.readline 'console' (Get-ExportedFile $export)) -Password $password
            Assert-HelperOk $restore
            $restore.Result.result.tool_output | Should Match 'Secure Storage Restore Complete'
        }
    }

    Context 'a tool that reads masked keys with Console.ReadKey' {
        It 'fails over stdin with the .NET message' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readkey 'stdin') -Password $password
            $export.ResultLines | Should Be 1
            $export.Result.ok | Should Be $false
            $export.Result.error.message | Should Match 'Cannot read keys when either application does not have a console or when console input has been redirected'
        }

        It 'exports and restores with tool_input auto, through the pseudo console' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readkey 'auto') -Password $password
            Assert-HelperOk $export
            $file = Get-ExportedFile $export
            Assert-ExactPassword $file $password
            $export.Result.result.tool_output | Should Match 'input: console'
            (Test-PasswordIn $export.Stdout $password) | Should Be $false

            $restore = Invoke-Helper -Helper restore -Params (Get-RestoreParams $tools.readkey 'auto' $file) -Password $password
            Assert-HelperOk $restore
            $restore.Result.result.tool_output | Should Match 'Secure Storage Restore Complete'
        }
    }

    Context 'a tool that fails' {
        It 'reports tool-failed with the tool''s message over stdin' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.failing 'stdin') -Password $password
            Assert-HelperFailed $export 'tool-failed'
            $export.Result.error.message | Should Match 'KEYFLEET-STUB-FAILURE'
        }

        It 'reports tool-failed with the tool''s message on a pseudo console' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.failing 'console') -Password $password
            Assert-HelperFailed $export 'tool-failed'
            $export.Result.error.message | Should Match 'KEYFLEET-STUB-FAILURE'
        }
    }

    Context 'a tool that never reads and never exits' {
        It 'is stopped with its whole process tree after tool_timeout over stdin' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.hanging 'stdin' 5) -Password $password
            Assert-HelperFailed $export 'tool-timeout'
            $export.Seconds | Should BeGreaterThan 5
            $export.Seconds | Should BeLessThan 95
            Wait-NoStubProcess $tools.hanging | Should Be 0
        }

        It 'is stopped with its whole process tree after tool_timeout on a pseudo console' {
            $export = Invoke-Helper -Helper export -Params (Get-ExportParams $tools.hanging 'console' 5) -Password $password
            Assert-HelperFailed $export 'tool-timeout'
            $export.Seconds | Should BeGreaterThan 5
            $export.Seconds | Should BeLessThan 95
            Wait-NoStubProcess $tools.hanging | Should Be 0
        }
    }

    Context 'Constrained Language Mode (AppLocker or WDAC script enforcement)' {
        It 'fails with kind constrained-language' {
            # __PSLockdownPolicy=4 makes powershell.exe start in Constrained Language Mode, as enforcement would
            $probe = Invoke-Helper -Helper probe -Params @{ tool_path = $tools.readline } -Environment @{ '__PSLockdownPolicy' = '4' }
            # the bootstrap's first statement throws before any try: powershell.exe writes CLIXML to stderr,
            # which keyfleet decodes (remote.decode_clixml) into kind constrained-language
            $probe.ResultLines | Should Be 0
            $probe.ExitCode | Should Be 1
            $probe.Stderr | Should Match '#< CLIXML'
            $probe.Stderr | Should Match 'KEYFLEET-CONSTRAINED-LANGUAGE: PowerShell runs in ConstrainedLanguage mode'
        }
    }

    Context 'module logging and script block logging turned on' {
        BeforeAll {
            $savedPolicy = Enable-PowerShellLogging
            $since = (Get-Date).AddSeconds(-1)
        }

        AfterAll {
            Restore-PowerShellLogging $savedPolicy
        }

        It 'keeps the password out of stdout, stderr and events 4103 and 4104' {
            $runs = @(
                Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readline 'stdin') -Password $password
                Invoke-Helper -Helper export -Params (Get-ExportParams $tools.readkey 'auto') -Password $password
            )
            foreach ($run in $runs) {
                Assert-HelperOk $run
                (Test-PasswordIn $run.Stdout $password) | Should Be $false
                (Test-PasswordIn $run.Stderr $password) | Should Be $false
            }
            Start-Sleep -Seconds 2  # the event log is written asynchronously
            $filter = @{ LogName = 'Microsoft-Windows-PowerShell/Operational'; Id = 4103, 4104; StartTime = $since }
            $records = @(Get-WinEvent -FilterHashtable $filter -ErrorAction SilentlyContinue)
            # the logging really was on: the helper's script blocks and its cmdlet calls were recorded
            @($records | Where-Object { $_.Id -eq 4104 -and $null -ne $_.Message -and $_.Message.Contains('Invoke-ToolConsole') }).Count | Should BeGreaterThan 0
            @($records | Where-Object { $_.Id -eq 4103 }).Count | Should BeGreaterThan 0
            $leaks = 0
            foreach ($record in $records) {
                if (Test-PasswordIn $record.Message $password) { $leaks += 1 }
            }
            $leaks | Should Be 0
        }
    }
}
