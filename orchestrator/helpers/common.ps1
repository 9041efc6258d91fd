<#
.SYNOPSIS
    keyfleet helper common part: the parameters, settings and functions every helper uses.
.DESCRIPTION
    Never run alone: keyfleet sends each helper as one script, this file, conpty.ps1, then
    <helper>.ps1 (orchestrator/remote.py, load_script), so the server needs no file and the bootstrap
    command line stays constant. The bootstrap runs that script with -Params (the helper's parameters)
    and -Secret (the password as a SecureString, or $null). A helper returns one hashtable, its
    result; a failure is thrown with its kind in Exception.Data['KeyfleetKind'] (Stop-Helper).
    The plain password exists only inside Invoke-ToolStdin and Invoke-ToolConsole, and only .NET
    calls touch it: module logging (event 4103) records every value bound to a command parameter.
    Written for Windows PowerShell 5.1 and .NET Framework 4.6.2 or later.
#>
param(
    [Parameter(Mandatory = $true)] [psobject] $Params,
    [Security.SecureString] $Secret  # the bootstrap passes it to every helper; the probe needs none
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$HelperVersion = '2.0.0'
$MinimumFreeBytes = 10MB
$MaximumKeyFileBytes = 256KB
$MaximumOutputChars = 8000
$StallSeconds = 15  # tool_input auto: a prompt followed by this long without output is a masked read
$SetupKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Service Manager\Setup'
$SdkServiceKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Common\SDK Service'
$UninstallEntries = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*'
# Default install folders (Microsoft's Service Manager deployment documentation): 2019 and later, then 2016
$DefaultInstallFolders = @(
    'C:\Program Files\Microsoft System Center\Service Manager'
    'C:\Program Files\Microsoft System Center 2016\Service Manager'
)
$ToolName = 'SecureStorageBackup.exe'
$MaskedReadMessage = 'Cannot read keys when either application does not have a console or when console input has been redirected'

function Stop-Helper([string] $Kind, [string] $Message) {
    $exception = New-Object System.InvalidOperationException $Message
    $exception.Data['KeyfleetKind'] = $Kind
    throw $exception
}

function Get-Param([string] $Name) {
    $property = $Params.PSObject.Properties[$Name]
    if ($null -eq $property) { return $null }
    return $property.Value
}

function Get-ToolTimeout {
    $value = Get-Param 'tool_timeout'
    if ($null -eq $value) { return 120.0 }
    $seconds = $value -as [double]
    if ($null -eq $seconds -or $seconds -le 0) { Stop-Helper 'remote' "tool_timeout must be a positive number of seconds, not '$value'" }
    return $seconds
}

function Get-ToolInput {
    $value = Get-Param 'tool_input'
    if (-not $value) { return 'auto' }
    if (@('auto', 'stdin', 'console') -notcontains $value) { Stop-Helper 'remote' "tool_input must be auto, stdin or console, not '$value'" }
    return [string]$value
}

function Test-Administrator {
    $principal = New-Object Security.Principal.WindowsPrincipal ([Security.Principal.WindowsIdentity]::GetCurrent())
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Assert-Administrator {
    if (-not (Test-Administrator)) {
        Stop-Helper 'not-admin' "$env:USERDOMAIN\$env:USERNAME is not a local administrator; SecureStorageBackup.exe needs administrator rights"
    }
}

function Get-RegistryValue([string] $Path, [string] $Name) {
    $item = Get-ItemProperty -LiteralPath $Path -ErrorAction SilentlyContinue
    if ($null -eq $item -or $null -eq $item.PSObject.Properties[$Name]) { return $null }
    return $item.$Name
}

function Get-ScsmRoles {
    # every role this server holds: a portal often shares a machine with a management server
    $roles = New-Object Collections.Generic.List[string]
    switch (Get-RegistryValue $SdkServiceKey 'SDK Service Type') {
        1 { $roles.Add('management_server') }
        2 { $roles.Add('dw_management_server') }
    }
    if ($null -ne (Get-RegistryValue $SetupKey 'PortalVirtualDirectory')) { $roles.Add('self_service_portal') }
    return , $roles.ToArray()
}

function Get-ScsmVersion {
    # Setup's ServerVersion first; else the newest Uninstall entry of Microsoft's own Service Manager
    # products (third-party add-ons often name "Service Manager" too, with their own version numbers)
    $serverVersion = Get-RegistryValue $SetupKey 'ServerVersion'
    if ($serverVersion) { return [string]$serverVersion }
    $best = $null
    foreach ($entry in @(Get-ItemProperty -Path $UninstallEntries -ErrorAction SilentlyContinue)) {
        $properties = $entry.PSObject.Properties
        if ($null -eq $properties['DisplayName'] -or $null -eq $properties['DisplayVersion'] -or $null -eq $properties['Publisher']) { continue }
        if ([string]$entry.Publisher -ne 'Microsoft Corporation') { continue }
        if ([string]$entry.DisplayName -notmatch '^(Microsoft )?System Center( \d{4})?( R2)? Service Manager( \d{4})?$') { continue }
        $parsed = $null
        if ([version]::TryParse([string]$entry.DisplayVersion, [ref]$parsed) -and ($null -eq $best -or $parsed -gt $best)) {
            $best = $parsed
        }
    }
    if ($null -eq $best) { return $null }
    return $best.ToString()
}

function Get-ToolFolders {
    # the install folder Setup recorded, then each version's default folder
    $folders = @($DefaultInstallFolders)
    $installDirectory = Get-RegistryValue $SetupKey 'InstallDirectory'
    if ($installDirectory) { $folders = @(([string]$installDirectory).TrimEnd('\')) + $folders }
    return , $folders
}

function Get-ToolCandidates {
    # in order: tool_path, then each folder as it is and with Tools\SecureStorageBackup (where the
    # installation media keep the tool)
    $candidates = New-Object Collections.Generic.List[string]
    $configured = Get-Param 'tool_path'
    if ($configured) { $candidates.Add([string]$configured) }
    foreach ($folder in (Get-ToolFolders)) {
        $candidates.Add([IO.Path]::Combine($folder, $ToolName))
        $candidates.Add([IO.Path]::Combine($folder, 'Tools\SecureStorageBackup', $ToolName))
    }
    return , $candidates.ToArray()
}

function Find-Tool {
    foreach ($candidate in (Get-ToolCandidates)) {
        if ([IO.File]::Exists($candidate)) { return $candidate }
    }
    return $null
}

function Get-RequiredTool {
    $tool = Find-Tool
    if ($null -eq $tool) {
        $where = (Get-ToolFolders) -join '; '
        $configured = Get-Param 'tool_path'
        if ($configured) { $where = "tool_path $configured; $where" }
        Stop-Helper 'tool-missing' ('SecureStorageBackup.exe not found in {0} (each folder also under Tools\SecureStorageBackup): copy Tools\SecureStorageBackup from the Service Manager installation media to this server and set tool_path' -f $where)
    }
    return $tool
}

function New-PrivateFolder {
    $root = [IO.Path]::GetTempPath()
    $drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($root))
    if ($drive.AvailableFreeSpace -lt $MinimumFreeBytes) {
        Stop-Helper 'disk-full' ('only {0} bytes free on {1} (temporary folder {2}); at least {3} needed' -f $drive.AvailableFreeSpace, $drive.Name, $root, $MinimumFreeBytes)
    }
    $security = New-Object Security.AccessControl.DirectorySecurity
    $security.SetAccessRuleProtection($true, $false)
    $inherit = [Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    foreach ($sid in 'S-1-5-32-544', 'S-1-5-18') {
        $identity = New-Object Security.Principal.SecurityIdentifier $sid
        $rule = New-Object Security.AccessControl.FileSystemAccessRule($identity, 'FullControl', $inherit, 'None', 'Allow')
        $security.AddAccessRule($rule)
    }
    $path = Join-Path $root ('keyfleet-' + [guid]::NewGuid().ToString('N'))
    [IO.Directory]::CreateDirectory($path, $security) | Out-Null
    return $path
}

function Remove-PrivateFolder([string] $Path) {
    # antivirus or the indexer may hold a file a moment: retry, then report instead of failing a good export
    $lastError = $null
    for ($attempt = 1; $attempt -le 5; $attempt++) {
        try {
            if ([IO.Directory]::Exists($Path)) { [IO.Directory]::Delete($Path, $true) }
            return $null
        }
        catch [IO.IOException], [UnauthorizedAccessException] {
            $lastError = $_.Exception.Message
            [Threading.Thread]::Sleep(200 * $attempt)
        }
    }
    return "could not remove the temporary folder $Path after 5 attempts: $lastError"
}

function Get-Sha256Hex([byte[]] $Bytes) {
    $sha256 = [Security.Cryptography.SHA256]::Create()
    try { return [BitConverter]::ToString($sha256.ComputeHash($Bytes)).Replace('-', '').ToLowerInvariant() }
    finally { $sha256.Dispose() }
}

function Stop-ToolTree([int] $ProcessId) {
    # Process.Kill() stops one process and Kill($true) exists only in .NET Core 3.0+: taskkill /T stops the tree.
    # Its exit code 128 (no such process) means the tool ended by itself in the meantime, which is fine.
    $info = New-Object Diagnostics.ProcessStartInfo
    $info.FileName = Join-Path ([Environment]::SystemDirectory) 'taskkill.exe'
    $info.Arguments = '/T /F /PID {0}' -f $ProcessId
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $taskkill = [Diagnostics.Process]::Start($info)
    try {
        # drained so that taskkill never blocks on a full pipe, and never writes to the helper's own stdout
        $null = $taskkill.StandardOutput.ReadToEndAsync()
        $null = $taskkill.StandardError.ReadToEndAsync()
        if (-not $taskkill.WaitForExit(30000)) { $taskkill.Kill() }
    }
    finally {
        $taskkill.Dispose()
    }
}

function Get-BoundedText([string] $Text) {
    $Text = $Text.Trim()
    if ($Text.Length -gt $MaximumOutputChars) { $Text = $Text.Substring(0, $MaximumOutputChars) + '...' }
    return $Text
}

function Invoke-ToolStdin([string] $ToolPath, [string] $Verb, [string] $KeyFile, [double] $TimeoutSeconds, [bool] $WatchStall) {
    # .NET Framework's Process.Start wraps stdin in a StreamWriter over Console.InputEncoding and
    # flushes its preamble at once: under code page 65001 that is a UTF-8 BOM in front of the password
    # (dotnet/corefx#5556; ansible/ansible#15770, fixed in Ansible's exec wrapper by a UTF-8 encoding
    # without BOM). So: that encoding for the console, and the password as bytes we encode ourselves.
    $encoding = New-Object Text.UTF8Encoding $false
    [Console]::InputEncoding = $encoding
    [Console]::OutputEncoding = $encoding
    $info = New-Object Diagnostics.ProcessStartInfo
    $info.FileName = $ToolPath
    $info.Arguments = '{0} "{1}"' -f $Verb, $KeyFile
    # Operations Manager's documentation: the tool fails to load its DLLs outside its own folder
    $info.WorkingDirectory = [IO.Path]::GetDirectoryName($ToolPath)
    $info.UseShellExecute = $false
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $process = [Diagnostics.Process]::Start($info)
    try {
        $stderr = $process.StandardError.ReadToEndAsync()
        $bstr = [Runtime.InteropServices.Marshal]::SecureStringToBSTR($Secret)
        try {
            $plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr)
            # the tool asks twice ("enter the password", "re-enter your password"); CRLF as a console sends
            $passwordBytes = $encoding.GetBytes($plain + "`r`n" + $plain + "`r`n")
            try {
                $process.StandardInput.BaseStream.Write($passwordBytes, 0, $passwordBytes.Length)
                $process.StandardInput.BaseStream.Flush()
                $process.StandardInput.Close()
            }
            catch [IO.IOException] {
                # the tool exited or closed its stdin early: its exit code and output say why
            }
            finally {
                [Array]::Clear($passwordBytes, 0, $passwordBytes.Length)
            }
            # stdout as it comes, so a prompt followed by silence (a masked read) is seen before the timeout
            $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
            $stdout = New-Object IO.MemoryStream
            $buffer = New-Object byte[] 4096
            $stream = $process.StandardOutput.BaseStream
            $pending = $stream.ReadAsync($buffer, 0, $buffer.Length)
            $lastOutput = [DateTime]::UtcNow
            $stalled = $false
            $ended = $false
            while (-not $ended) {
                if ($pending.Wait(200)) {
                    $count = $pending.Result
                    if ($count -eq 0) { $ended = $true; continue }
                    $stdout.Write($buffer, 0, $count)
                    $lastOutput = [DateTime]::UtcNow
                    $pending = $stream.ReadAsync($buffer, 0, $buffer.Length)
                    continue
                }
                $now = [DateTime]::UtcNow
                if ($now -gt $deadline) { break }
                if ($WatchStall -and ($now - $lastOutput).TotalSeconds -gt $StallSeconds -and -not $process.HasExited) {
                    $seen = $encoding.GetString($stdout.ToArray())
                    if ($seen -match 'password') { $stalled = $true; break }
                }
            }
            if (-not $ended) {
                Stop-ToolTree $process.Id
                [void]$process.WaitForExit(10000)
                if ($stdout.Length -eq 0) {
                    Stop-Helper 'tool-interactive' ('SecureStorageBackup.exe showed no prompt in {0} s and was stopped: it waits for a desktop (the wizard): run the wizard on this server (a backup''s key file is then taken with keyfleet collect).' -f $TimeoutSeconds)
                }
                if (-not $stalled) {
                    Stop-Helper 'tool-timeout' ('SecureStorageBackup.exe did not finish within {0} s and was stopped. Run keyfleet doctor --tool-smoke, or raise tool_timeout.' -f $TimeoutSeconds)
                }
            }
            if ($ended) {
                # stdout is closed; the tool still has until the deadline to exit
                $left = [int][Math]::Max(0, [Math]::Min(($deadline - [DateTime]::UtcNow).TotalMilliseconds, [int]::MaxValue))
                if (-not $process.WaitForExit($left)) {
                    Stop-ToolTree $process.Id
                    Stop-Helper 'tool-timeout' ('SecureStorageBackup.exe closed its output but did not exit within {0} s and was stopped' -f $TimeoutSeconds)
                }
            }
            $errors = ''
            if ($stderr.Wait(5000)) { $errors = $stderr.Result }
            $output = $encoding.GetString($stdout.ToArray()) + $errors
            # a tool that echoes what it reads must not carry the password into the result
            if ($plain.Length -gt 0) { $output = $output.Replace($plain, '********') }
        }
        finally {
            $plain = $null
            [Runtime.InteropServices.Marshal]::ZeroFreeBSTR($bstr)
        }
        $exitCode = -1
        if (-not $stalled) { $exitCode = $process.ExitCode }
        return @{ exit = $exitCode; output = (Get-BoundedText $output); method = 'stdin'; stalled = $stalled }
    }
    finally {
        $process.Dispose()
    }
}

function Invoke-Tool([string] $ToolPath, [string] $Verb, [string] $KeyFile, [double] $TimeoutSeconds) {
    # tool_input: stdin (redirected stdin), console (a pseudo console, conpty.ps1), or auto: stdin,
    # then once the console when the tool reads masked keys (Console.ReadKey throws under a pipe)
    $mode = Get-ToolInput
    if ($mode -eq 'console') { return Invoke-ToolConsole $ToolPath $Verb $KeyFile $TimeoutSeconds }
    $run = Invoke-ToolStdin $ToolPath $Verb $KeyFile $TimeoutSeconds ($mode -eq 'auto')
    $masked = $run.stalled -or ($run.exit -ne 0 -and $run.output.Contains($MaskedReadMessage))
    if ($mode -eq 'auto' -and $masked) {
        if ([IO.File]::Exists($KeyFile) -and $Verb -eq 'Backup') { [IO.File]::Delete($KeyFile) }
        return Invoke-ToolConsole $ToolPath $Verb $KeyFile $TimeoutSeconds
    }
    return $run
}

function New-ToolResult([string[]] $Roles, $Version, [string] $ToolPath, [hashtable] $Run) {
    # the result fields of every helper that ran the tool; $Version may be $null
    return @{
        roles          = $Roles
        version        = $Version
        tool_path      = $ToolPath
        tool_exit      = $Run.exit
        tool_output    = $Run.output
        method         = $Run.method
        computer_name  = $env:COMPUTERNAME
        helper_version = $HelperVersion
    }
}
